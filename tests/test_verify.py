"""verify: the registry handshake against a real HTTP server on loopback, the engine path
against a socket where no engine listens."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from spcs_registry_agent.errors import AgentError
from spcs_registry_agent.verify import (
    CredentialsRefused,
    EngineUnreachable,
    base_urls,
    parse_challenge,
    registry_login,
    verify_credentials,
)

USER = "0sessiontoken"
PASSWORD = json.dumps({"token": "REGISTRYSECRET-123", "expires_in": 3600})


@dataclass
class Behaviour:
    """How the test registry answers; `seen` records (path, Authorization) per request."""

    challenge: str = 'Bearer realm="{realm}",service="svc",scope="registry:catalog:*"'
    password: str = PASSWORD
    anonymous: bool = False
    token_body: bytes = b'{"token": "bearer-ok"}'
    realm_redirect: bool = False
    seen: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def registry() -> Iterator[tuple[str, Behaviour]]:
    """A tiny token-auth registry on 127.0.0.1 over plain http; yields (host, behaviour)."""
    behaviour = Behaviour()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            url = urlsplit(self.path)
            behaviour.seen.append((self.path, auth))
            basic = "Basic " + base64.b64encode(f"{USER}:{behaviour.password}".encode()).decode()
            if url.path == "/v2/":
                if behaviour.anonymous or auth in (basic, "Bearer bearer-ok"):
                    return self._answer(200, b"{}")
                realm = f"http://{self.headers['Host']}/token"
                challenge = behaviour.challenge.format(realm=realm)
                return self._answer(401, b"{}", {"WWW-Authenticate": challenge})
            if url.path == "/token":
                if behaviour.realm_redirect:
                    return self._answer(302, b"", {"Location": "/elsewhere"})
                query = parse_qs(url.query)
                assert query["service"] == ["svc"]
                assert query["account"] == [USER]
                if auth != basic:
                    return self._answer(401, b'{"errors": []}')
                return self._answer(200, behaviour.token_body)
            return self._answer(404, b"")

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", behaviour
    server.shutdown()
    server.server_close()
    thread.join()


def test_parse_challenge() -> None:
    assert parse_challenge('Bearer realm="https://r/t",service="s",scope="a:b:pull,push"') == (
        "bearer",
        {"realm": "https://r/t", "service": "s", "scope": "a:b:pull,push"},
    )
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert parse_challenge("") == ("", {})


@pytest.mark.parametrize(
    ("host", "urls"),
    [
        ("org-acct.registry.snowflakecomputing.com", ["https://org-acct.registry.snowflakecomputing.com"]),
        ("127.0.0.2:5000", ["https://127.0.0.2:5000", "http://127.0.0.2:5000"]),
        ("localhost:5000", ["https://localhost:5000", "http://localhost:5000"]),
        ("[::1]:5000", ["https://[::1]:5000", "http://[::1]:5000"]),
        ("10.0.0.1:5000", ["https://10.0.0.1:5000"]),
    ],
)  # fmt: skip
def test_plain_http_only_for_loopback(host: str, urls: list[str]) -> None:
    assert base_urls(host) == urls


def test_registry_handshake_accepts(registry: tuple[str, Behaviour]) -> None:
    host, behaviour = registry
    registry_login(host, USER, PASSWORD, timeout=5)
    paths = [path.split("?")[0] for path, _ in behaviour.seen]
    assert paths == ["/v2/", "/token", "/v2/"]
    assert behaviour.seen[0][1] == ""  # the probe carries no credentials
    assert "scope=registry%3Acatalog%3A%2A" in behaviour.seen[1][0]


def test_registry_handshake_reports_a_refusal(registry: tuple[str, Behaviour]) -> None:
    host, behaviour = registry
    behaviour.password = "something else"
    with pytest.raises(CredentialsRefused) as err:
        registry_login(host, USER, PASSWORD, timeout=5)
    assert str(err.value) == f"registry {host} refused the credentials"
    assert err.value.exit_code == 1


def test_basic_auth_registry(registry: tuple[str, Behaviour]) -> None:
    host, behaviour = registry
    behaviour.challenge = 'Basic realm="Registry"'
    registry_login(host, USER, PASSWORD, timeout=5)
    behaviour.password = "other"
    with pytest.raises(CredentialsRefused):
        registry_login(host, USER, PASSWORD, timeout=5)


def test_anonymous_registry_is_not_a_failure(registry: tuple[str, Behaviour]) -> None:
    host, behaviour = registry
    behaviour.anonymous = True
    registry_login(host, USER, PASSWORD, timeout=5)
    assert len(behaviour.seen) == 1


def test_credentials_never_go_to_a_plain_http_realm_elsewhere(
    registry: tuple[str, Behaviour],
) -> None:
    host, behaviour = registry
    behaviour.challenge = 'Bearer realm="http://realm.example.invalid/token",service="svc"'
    with pytest.raises(AgentError, match="non-https realm"):
        registry_login(host, USER, PASSWORD, timeout=5)
    behaviour.challenge = 'Bearer realm="file://localhost/etc/passwd",service="svc"'
    with pytest.raises(AgentError, match="non-https realm"):
        registry_login(host, USER, PASSWORD, timeout=5)


def test_realm_redirects_are_not_followed(registry: tuple[str, Behaviour]) -> None:
    host, behaviour = registry
    behaviour.realm_redirect = True
    with pytest.raises(AgentError, match="answered HTTP 302"):
        registry_login(host, USER, PASSWORD, timeout=5)
    assert not any(path == "/elsewhere" for path, _ in behaviour.seen)


@pytest.mark.parametrize("body", [b"{}", b"not json", b'["token"]', b'{"token": ""}'])
def test_token_service_without_a_token(registry: tuple[str, Behaviour], body: bytes) -> None:
    host, behaviour = registry
    behaviour.token_body = body
    with pytest.raises(AgentError, match="answered without a token"):
        registry_login(host, USER, PASSWORD, timeout=5)


def test_unreachable_registry(registry: tuple[str, Behaviour]) -> None:
    with pytest.raises(AgentError, match=r"^cannot reach registry 127\.0\.0\.1:1: "):
        registry_login("127.0.0.1:1", USER, PASSWORD, timeout=5)


def test_none_checks_nothing() -> None:
    assert verify_credentials("127.0.0.1:1", USER, PASSWORD, "none", env={}) == "none"


def test_auto_falls_back_to_the_registry_without_an_engine(
    registry: tuple[str, Behaviour], tmp_path: Path
) -> None:
    host, _ = registry
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    assert verify_credentials(host, USER, PASSWORD, "auto", env=env, timeout=5) == "registry"


def test_engine_mode_without_an_engine_fails(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    with pytest.raises(EngineUnreachable, match=r"^docker engine not reachable: ") as err:
        verify_credentials("127.0.0.1:1", USER, PASSWORD, "engine", env=env, timeout=5)
    assert "\n" not in str(err.value)


def test_no_message_carries_the_secret(registry: tuple[str, Behaviour], tmp_path: Path) -> None:
    host, behaviour = registry
    behaviour.password = "x"
    messages = []
    for mode, env in (("registry", {}), ("engine", {"DOCKER_HOST": f"unix://{tmp_path}/n"})):
        with pytest.raises(AgentError) as err:
            verify_credentials(host, USER, PASSWORD, mode, env=env, timeout=5)  # type: ignore[arg-type]
        messages.append(str(err.value))
    assert all("REGISTRYSECRET" not in m for m in messages), messages
