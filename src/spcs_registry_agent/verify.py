"""Proving that a registry accepts credentials: through the Docker engine, or the registry itself.

`engine` asks the Docker engine (DOCKER_HOST honoured) to log in, exactly what a later
`docker pull` will depend on. `registry` speaks the registry's own token handshake over
HTTP without any engine, for hosts that have none (CI runners using skopeo, buildah,
kaniko). `auto` prefers the engine and falls back to the registry when no engine answers.
The docker SDK is imported only when the engine is asked.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.message import Message
from typing import Literal

import structlog

from spcs_registry_agent.errors import AgentError

VerifyMode = Literal["auto", "engine", "registry", "none"]
VERIFY_MODES: tuple[VerifyMode, ...] = ("auto", "engine", "registry", "none")

log = structlog.get_logger(__name__)

_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


class CredentialsRefused(AgentError):
    """The registry (or its token service) said no to the credentials."""

    def __init__(self, host: str) -> None:
        super().__init__(f"registry {host} refused the credentials")


class EngineUnreachable(AgentError):
    """No Docker engine answered at DOCKER_HOST (or the default socket)."""


def verify_credentials(
    host: str,
    username: str,
    password: str,
    mode: VerifyMode,
    *,
    env: Mapping[str, str],
    timeout: float = 30.0,
) -> str:
    """Check the credentials as `mode` says; return the check that ran ("engine"...).

    Raises CredentialsRefused when they are refused, AgentError when the check itself
    could not be done - except an unreachable engine under `auto`, which is logged.
    """
    if mode == "none":
        return "none"
    if mode in ("auto", "engine"):
        try:
            engine_login(host, username, password, env=env, timeout=timeout)
        except EngineUnreachable as e:
            if mode == "engine":
                raise
            log.warning("docker_engine_unreachable", detail=str(e), fallback="registry")
        else:
            return "engine"
    registry_login(host, username, password, timeout=timeout)
    return "registry"


def engine_login(
    host: str, username: str, password: str, *, env: Mapping[str, str], timeout: float
) -> None:
    """Have the engine log in (reauth: no cached answer); it checks against the registry."""
    import docker
    from docker.errors import APIError, DockerException

    try:
        # version=None makes the SDK ask the engine for its API version: our ping.
        client = docker.from_env(environment=dict(env), timeout=int(max(timeout, 1)))
    except DockerException as e:
        raise EngineUnreachable(f"docker engine not reachable: {_one_line(str(e))}") from None
    try:
        client.login(username=username, password=password, registry=host, reauth=True)
    except APIError as e:
        detail = _one_line(str(e.explanation or e))
        if e.status_code == 401 or "unauthorized" in detail.lower():
            raise CredentialsRefused(host) from None
        raise AgentError(f"docker engine could not log in to {host}: {detail}") from None
    except DockerException as e:
        raise EngineUnreachable(f"docker engine not reachable: {_one_line(str(e))}") from None
    finally:
        client.close()
    log.info("registry_credentials_verified", host=host, via="engine")


def registry_login(host: str, username: str, password: str, *, timeout: float) -> None:
    """The registry's own handshake: /v2/ -> challenge -> credentials -> /v2/ accepted."""
    base, status, headers = _probe(host, timeout)
    if status == 200:
        log.warning("registry_allows_anonymous_access", host=host)
        return
    scheme, params = parse_challenge(headers.get("WWW-Authenticate", ""))
    basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    if scheme == "basic":
        authorization = basic
    elif scheme == "bearer" and params.get("realm"):
        realm = params["realm"]
        if not _safe_realm(realm):
            raise AgentError(f"registry {host} sends credentials to a non-https realm; refused")
        query: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
        query["account"] = username
        sep = "&" if urllib.parse.urlsplit(realm).query else "?"
        status, _, body = _get(
            realm + sep + urllib.parse.urlencode(query), {"Authorization": basic}, timeout
        )
        if status in (401, 403):
            raise CredentialsRefused(host)
        if status != 200:
            raise AgentError(f"token service of registry {host} answered HTTP {status}")
        authorization = "Bearer " + _token_from(body, host)
    else:
        raise AgentError(f"registry {host} asks for unsupported authentication {scheme!r}")
    status, _, _ = _get(base + "/v2/", {"Authorization": authorization}, timeout)
    if status in (401, 403):
        raise CredentialsRefused(host)
    if status != 200:
        raise AgentError(f"registry {host} answered HTTP {status} to /v2/")
    log.info("registry_credentials_verified", host=host, via="registry")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): m[2] or m[3] for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def base_urls(host: str) -> list[str]:
    """https first; plain http only for loopback hosts (docker's default insecure range)."""
    urls = [f"https://{host}"]
    if _is_loopback_host(urllib.parse.urlsplit(f"//{host}").hostname or ""):
        urls.append(f"http://{host}")
    return urls


def _probe(host: str, timeout: float) -> tuple[str, int, Message]:
    """GET /v2/ without credentials on the first base URL that answers."""
    failure = ""
    for base in base_urls(host):
        try:
            status, headers, _ = _get(base + "/v2/", {}, timeout)
        except OSError as e:
            failure = _one_line(str(getattr(e, "reason", e)))
            continue
        return base, status, headers
    raise AgentError(f"cannot reach registry {host}: {failure}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would forward our Authorization header to wherever a redirect points."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get(url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 - http(s) only
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


def _token_from(body: bytes, host: str) -> str:
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise AgentError(f"token service of registry {host} answered without a token")
    return token


def _safe_realm(url: str) -> bool:
    """Credentials go to https realms, or to plain http only on this machine."""
    parts = urllib.parse.urlsplit(url)
    loopback = _is_loopback_host(parts.hostname or "")
    return parts.scheme == "https" or (parts.scheme == "http" and loopback)


def _is_loopback_host(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "no detail"
