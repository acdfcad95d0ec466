"""The fake Snowflake against the real connector (4.x and 5.x), so other tests can trust it."""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector
from snowflake.connector import DictCursor
from snowflake.connector.errors import DatabaseError, OperationalError, ProgrammingError
from support.fake_snowflake import (
    DEFAULT_PASSWORD,
    DEFAULT_PRIVATELINK_HOST,
    DEFAULT_REGISTRY_HOST,
    DEFAULT_USER,
    FakeSnowflake,
    ImageRepository,
    KeyPair,
    ManualClock,
    SnowflakeHome,
    new_rsa_key,
    write_key_pair,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

CONNECTOR_MAJOR = int(version("snowflake-connector-python").split(".")[0])
SHOW_SCHEMA = "show image repositories in schema snowflake.images"
SHOW_ACCOUNT = "show image repositories in account"


def connect(fake: FakeSnowflake, **kwargs: Any) -> Any:
    """A real connector session; password login as alice unless kwargs say otherwise."""
    args: dict[str, Any] = {"user": DEFAULT_USER, "password": DEFAULT_PASSWORD, "login_timeout": 5}
    args.update(kwargs)
    return snowflake.connector.connect(**fake.connect_args(**args))


def issue(conn: Any) -> str:
    """ISSUE a registry token the way snowflake-cli does; return Docker's password text."""
    data = conn.rest._token_request("ISSUE")["data"]
    return json.dumps({"token": data["sessionToken"], "expires_in": data["validityInSecondsST"]})


def errno_of(exc: BaseException) -> int | None:
    """4.x wraps token-request failures in ReauthenticationRequest(cause=ProgrammingError)."""
    return getattr(getattr(exc, "cause", exc), "errno", None)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


@pytest.fixture
def clocked_fake(clock: ManualClock) -> Iterator[FakeSnowflake]:
    with FakeSnowflake(clock=clock) as fake:
        yield fake
        assert fake.internal_errors == []


def call(
    url: str,
    body: bytes | None = b"{}",
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
) -> Any:
    """One plain HTTP request to the fake (always a loopback http:// URL); JSON reply."""
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.loads(response.read())


# ---- logins ------------------------------------------------------------------------------------


@pytest.mark.connector
def test_password_login_opens_a_session_and_queries_run(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake)
    cursor = conn.cursor()
    cursor.execute("alter session set PYTHON_CONNECTOR_QUERY_RESULT_FORMAT = 'json'")
    conn.close()

    assert fake_snowflake.logins == {DEFAULT_USER: 1}
    assert fake_snowflake.queries == [
        "alter session set PYTHON_CONNECTOR_QUERY_RESULT_FORMAT = 'json'"
    ]
    login = fake_snowflake.requests_to("login")[0]
    assert login.body is not None
    assert login.body["data"]["PASSWORD"] == DEFAULT_PASSWORD
    if CONNECTOR_MAJOR == 4:  # the fake must have gunzipped it
        assert login.headers["content-encoding"] == "gzip"


@pytest.mark.connector
def test_wrong_password_is_refused_with_390100(fake_snowflake: FakeSnowflake) -> None:
    with pytest.raises(DatabaseError) as caught:
        connect(fake_snowflake, password="not-the-password")

    assert caught.value.errno == 390100
    assert "Incorrect username or password was specified." in str(caught.value)
    assert fake_snowflake.logins == {}
    assert [r.outcome for r in fake_snowflake.requests_to("login")] == ["390100"]


@pytest.mark.connector
def test_unknown_user_is_refused_with_390100(fake_snowflake: FakeSnowflake) -> None:
    with pytest.raises(DatabaseError) as caught:
        connect(fake_snowflake, user="mallory")
    assert caught.value.errno == 390100


@pytest.mark.connector
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-key", "encrypted-key"])
def test_key_pair_login_verifies_the_jwt(
    fake_snowflake: FakeSnowflake, key_pair_user: KeyPair, encrypted: bool
) -> None:
    conn = connect(fake_snowflake, password=None, **key_pair_user.connect_args(encrypted=encrypted))
    conn.close()

    assert fake_snowflake.logins == {key_pair_user.user: 1}
    login = fake_snowflake.requests_to("login")[0]
    assert login.body is not None
    assert login.body["data"]["AUTHENTICATOR"] == "SNOWFLAKE_JWT"


@pytest.mark.connector
def test_key_pair_login_with_another_key_is_refused(
    fake_snowflake: FakeSnowflake, key_pair_user: KeyPair, tmp_path: Path
) -> None:
    stranger = write_key_pair(tmp_path / "stranger", new_rsa_key(), user=key_pair_user.user)

    with pytest.raises(DatabaseError) as caught:
        connect(fake_snowflake, password=None, **stranger.connect_args())

    assert caught.value.errno == 390144
    assert fake_snowflake.logins == {}


@pytest.mark.connector
def test_key_pair_login_to_another_account_is_refused(
    fake_snowflake: FakeSnowflake, key_pair_user: KeyPair
) -> None:
    """The JWT's iss/sub name the account: a token minted for another one must not pass."""
    with pytest.raises(DatabaseError) as caught:
        connect(fake_snowflake, password=None, account="OTHERACCT", **key_pair_user.connect_args())
    assert caught.value.errno == 390144


@pytest.mark.connector
def test_pat_login(fake_snowflake: FakeSnowflake) -> None:
    fake_snowflake.add_user("robot", pat="pat-secret-value-1")

    conn = connect(
        fake_snowflake,
        user="robot",
        password=None,
        authenticator="PROGRAMMATIC_ACCESS_TOKEN",
        token="pat-secret-value-1",
    )
    conn.close()
    with pytest.raises(DatabaseError) as caught:
        connect(
            fake_snowflake,
            user="robot",
            password=None,
            authenticator="PROGRAMMATIC_ACCESS_TOKEN",
            token="pat-secret-value-2",
        )

    assert fake_snowflake.logins == {"robot": 1}
    assert caught.value.errno == 390100


# ---- queries -----------------------------------------------------------------------------------


@pytest.mark.connector
def test_show_image_repositories_in_both_scopes(fake_snowflake: FakeSnowflake) -> None:
    schema_repo = ImageRepository.at("a.registry.example", privatelink_host="a.privatelink.example")
    account_repo = ImageRepository.at("b.registry.example", database="Prod", name="Images")
    fake_snowflake.set_repositories(schema=[schema_repo], account=[schema_repo, account_repo])
    conn = connect(fake_snowflake)
    cursor = conn.cursor(DictCursor)

    schema_rows = cursor.execute(SHOW_SCHEMA).fetchall()
    account_rows = cursor.execute(SHOW_ACCOUNT).fetchall()
    fake_snowflake.set_repositories(account=[account_repo])
    empty_schema_rows = cursor.execute(SHOW_SCHEMA).fetchall()
    conn.close()

    assert [r["repository_url"] for r in schema_rows] == ["a.registry.example/db/schema/repo"]
    assert schema_rows[0]["privatelink_repository_url"] == "a.privatelink.example/db/schema/repo"
    assert [r["repository_url"] for r in account_rows] == [
        "a.registry.example/db/schema/repo",
        "b.registry.example/prod/schema/images",
    ]
    assert account_rows[1]["privatelink_repository_url"] is None
    assert account_rows[1]["name"] == "IMAGES"
    assert set(account_rows[0]) == {
        "created_on",
        "name",
        "database_name",
        "schema_name",
        "repository_url",
        "owner",
        "owner_role_type",
        "comment",
        "privatelink_repository_url",
    }
    assert empty_schema_rows == []


@pytest.mark.connector
def test_default_repository_is_one_schema_level_repo(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake)
    rows = conn.cursor(DictCursor).execute(SHOW_SCHEMA + ";").fetchall()
    conn.close()

    assert [(r["repository_url"], r["privatelink_repository_url"]) for r in rows] == [
        (
            f"{DEFAULT_REGISTRY_HOST}/db/schema/repo",
            f"{DEFAULT_PRIVATELINK_HOST}/db/schema/repo",
        )
    ]


@pytest.mark.connector
def test_other_sql_fails_like_snowflake(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake)
    with pytest.raises(ProgrammingError) as caught:
        conn.cursor().execute("select 1")
    conn.close()

    assert caught.value.errno == 1003
    assert caught.value.sqlstate == "42000"


# ---- registry tokens and session lifetime ------------------------------------------------------


@pytest.mark.connector
def test_issue_returns_a_registry_token(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake, server_session_keep_alive=True)
    reply = conn.rest._token_request("ISSUE")
    conn.close()

    token, validity = reply["data"]["sessionToken"], reply["data"]["validityInSecondsST"]
    assert validity == 3600
    assert fake_snowflake.issued_tokens() == [token]
    assert fake_snowflake.token_requests == {"ISSUE": 1}
    password = json.dumps({"token": token, "expires_in": validity})
    assert fake_snowflake.registry_password_is_valid(password)
    assert not fake_snowflake.registry_password_is_valid(token)  # the bare token is not it
    assert not fake_snowflake.registry_password_is_valid(
        json.dumps({"token": token, "expires_in": 60})
    )


@pytest.mark.connector
def test_close_with_keep_alive_sends_no_logout(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake, server_session_keep_alive=True)
    password = issue(conn)
    conn.close()

    assert fake_snowflake.requests_to("logout") == []
    assert fake_snowflake.registry_password_is_valid(password)


@pytest.mark.connector
def test_close_logs_out_and_revokes_issued_tokens(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake)
    password = issue(conn)
    conn.close()

    assert fake_snowflake.logouts == 1
    assert not fake_snowflake.registry_password_is_valid(password)


@pytest.mark.connector
def test_registry_token_expires_with_its_validity(
    clocked_fake: FakeSnowflake, clock: ManualClock
) -> None:
    clocked_fake.set_validity(token=60)
    conn = connect(clocked_fake, server_session_keep_alive=True)
    password = issue(conn)
    conn.close()

    assert json.loads(password)["expires_in"] == 60
    clock.advance(59)
    assert clocked_fake.registry_password_is_valid(password)
    clock.advance(1)
    assert not clocked_fake.registry_password_is_valid(password)


@pytest.mark.connector
def test_expired_session_token_is_renewed_by_the_connector(
    clocked_fake: FakeSnowflake, clock: ManualClock
) -> None:
    conn = connect(clocked_fake, server_session_keep_alive=True)
    clock.advance(3600)
    rows = conn.cursor().execute(SHOW_ACCOUNT).fetchall()
    conn.close()

    assert len(rows) == 1
    assert [r.outcome for r in clocked_fake.requests_to("query")] == ["390112", "ok"]
    assert clocked_fake.token_requests == {"RENEW": 1}


@pytest.mark.connector
def test_expired_master_token_fails_token_requests_with_390114(
    clocked_fake: FakeSnowflake, clock: ManualClock
) -> None:
    conn = connect(clocked_fake, server_session_keep_alive=True)
    clock.advance(14400)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the class differs by line, below
        issue(conn)
    conn.close()

    assert errno_of(caught.value) == 390114
    if CONNECTOR_MAJOR == 4:
        assert type(caught.value).__name__ == "ReauthenticationRequest"
        assert isinstance(caught.value.cause, ProgrammingError)  # type: ignore[attr-defined]
    else:
        assert isinstance(caught.value, DatabaseError)
    assert [r.outcome for r in clocked_fake.requests_to("token")] == ["390114"]


@pytest.mark.connector
def test_injected_390114_and_master_expiry_switch(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake, server_session_keep_alive=True)
    fake_snowflake.fail_code(390114, endpoint="token", count=1)
    with pytest.raises(Exception) as injected:  # noqa: PT011 - class differs by connector line
        issue(conn)
    issue(conn)  # the switch fired once only
    fake_snowflake.expire_master_tokens()
    with pytest.raises(Exception) as expired:  # noqa: PT011
        issue(conn)
    conn.close()

    assert errno_of(injected.value) == 390114
    assert errno_of(expired.value) == 390114
    assert [r.outcome for r in fake_snowflake.requests_to("token")] == ["390114", "ok", "390114"]


@pytest.mark.connector
def test_revoked_session_needs_a_new_login(fake_snowflake: FakeSnowflake) -> None:
    conn = connect(fake_snowflake, server_session_keep_alive=True)
    password = issue(conn)
    fake_snowflake.revoke_all_sessions()
    with pytest.raises(ProgrammingError) as caught:
        conn.cursor().execute(SHOW_ACCOUNT)
    conn.close()

    assert caught.value.errno == 390111
    assert fake_snowflake.queries == [SHOW_ACCOUNT]
    assert not fake_snowflake.registry_password_is_valid(password)


# ---- faults ------------------------------------------------------------------------------------


@pytest.mark.connector
def test_one_http_503_on_login_is_retried(fake_snowflake: FakeSnowflake) -> None:
    fake_snowflake.fail_http(503, count=1)
    connect(fake_snowflake, server_session_keep_alive=True).close()

    assert [r.outcome for r in fake_snowflake.requests_to("login")] == ["http 503", "ok"]


@pytest.mark.connector
def test_lasting_http_503_fails_login_within_the_timeout(fake_snowflake: FakeSnowflake) -> None:
    fake_snowflake.fail_http(503)
    started = time.monotonic()
    with pytest.raises(OperationalError):
        connect(fake_snowflake, login_timeout=2)

    assert time.monotonic() - started < 10
    assert fake_snowflake.logins == {}
    assert {r.outcome for r in fake_snowflake.requests_to("login")} == {"http 503"}


@pytest.mark.connector
def test_delay_slows_every_response(fake_snowflake: FakeSnowflake) -> None:
    fake_snowflake.delay(0.3)
    started = time.monotonic()
    connect(fake_snowflake, server_session_keep_alive=True).close()

    assert time.monotonic() - started >= 0.3


# ---- the fake on its own (plain HTTP) -----------------------------------------------------------


def test_gzip_login_body_and_unknown_paths(fake_snowflake: FakeSnowflake) -> None:
    body = {"data": {"LOGIN_NAME": DEFAULT_USER, "PASSWORD": DEFAULT_PASSWORD}}
    reply = call(
        f"{fake_snowflake.url}/session/v1/login-request",
        gzip.compress(json.dumps(body).encode()),
        {"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as missing:
        call(f"{fake_snowflake.url}/no/such/endpoint")

    assert reply["success"] is True
    data = reply["data"]
    assert isinstance(data["sessionId"], int)
    assert {"name": "CLIENT_TELEMETRY_ENABLED", "value": False} in data["parameters"]
    assert (data["validityInSeconds"], data["masterValidityInSeconds"]) == (3600, 14400)
    assert missing.value.code == 404
    assert [r.path for r in fake_snowflake.unknown_requests] == ["/no/such/endpoint"]


def test_wrong_credentials_answer_is_snowflakes(fake_snowflake: FakeSnowflake) -> None:
    body = {"data": {"LOGIN_NAME": DEFAULT_USER, "PASSWORD": "wrong"}}
    reply = call(f"{fake_snowflake.url}/session/v1/login-request", json.dumps(body).encode())

    assert reply["success"] is False
    assert reply["code"] == "390100"
    assert reply["message"] == "Incorrect username or password was specified."


def test_heartbeat_telemetry_and_token_renew_over_http(fake_snowflake: FakeSnowflake) -> None:
    body = {"data": {"LOGIN_NAME": DEFAULT_USER, "PASSWORD": DEFAULT_PASSWORD}}
    login = call(f"{fake_snowflake.url}/session/v1/login-request", json.dumps(body).encode())[
        "data"
    ]
    session = {"Authorization": f'Snowflake Token="{login["token"]}"'}
    master = {"Authorization": f'Snowflake Token="{login["masterToken"]}"'}

    heartbeat = call(f"{fake_snowflake.url}/session/heartbeat", b"", session)
    telemetry = call(f"{fake_snowflake.url}/telemetry/send", b'{"logs": []}', session)
    renew = call(
        f"{fake_snowflake.url}/session/token-request",
        json.dumps({"oldSessionToken": login["token"], "requestType": "RENEW"}).encode(),
        master,
    )

    assert heartbeat["success"] is True
    assert telemetry["success"] is True
    assert renew["success"] is True
    assert set(renew["data"]) >= {
        "sessionToken",
        "validityInSecondsST",
        "masterToken",
        "masterValidityInSeconds",
        "sessionId",
    }
    assert renew["data"]["sessionId"] == login["sessionId"]
    assert fake_snowflake.issued_tokens() == []  # RENEW is no registry token
    assert fake_snowflake.token_requests == {"RENEW": 1}


def test_add_route_serves_an_extra_endpoint_untouched_by_faults(
    fake_snowflake: FakeSnowflake,
) -> None:
    seen: list[tuple[str, Mapping[str, list[str]], str]] = []

    def realm(
        path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        seen.append((path, query, headers.get("authorization", "")))
        return 200, {"Content-Type": "application/json"}, b'{"token": "registry-jwt"}'

    fake_snowflake.add_route("GET", "/registry/token", realm)
    fake_snowflake.fail_http(503)
    answer = call(
        f"{fake_snowflake.url}/registry/token?service=reg&scope=repository:a:pull",
        None,
        {"Authorization": "Basic eDp5"},
        method="GET",
    )

    assert answer == {"token": "registry-jwt"}
    assert seen == [
        ("/registry/token", {"service": ["reg"], "scope": ["repository:a:pull"]}, "Basic eDp5")
    ]


def test_http_fault_for_seconds_and_injected_login_code(
    clocked_fake: FakeSnowflake, clock: ManualClock
) -> None:
    url = f"{clocked_fake.url}/session/v1/login-request"
    body = json.dumps({"data": {"LOGIN_NAME": DEFAULT_USER, "PASSWORD": DEFAULT_PASSWORD}})
    clocked_fake.fail_http(502, seconds=10)
    with pytest.raises(urllib.error.HTTPError) as during:
        call(url, body.encode())
    clock.advance(10)
    clocked_fake.fail_code("390100", endpoint="login", count=2)
    refused = [call(url, body.encode())["code"] for _ in range(2)]

    assert during.value.code == 502
    assert refused == ["390100", "390100"]
    assert call(url, body.encode())["success"] is True
    with pytest.raises(ValueError, match="unknown endpoint"):
        clocked_fake.fail_code(390112, endpoint="nowhere")


@pytest.mark.connector
def test_secrets_lists_every_credential_and_token(
    fake_snowflake: FakeSnowflake, key_pair_user: KeyPair
) -> None:
    fake_snowflake.add_user("robot", pat="pat-secret-value-1")
    conn = connect(fake_snowflake, password=None, **key_pair_user.connect_args())
    password = issue(conn)
    conn.close()

    known = fake_snowflake.secrets()
    login = fake_snowflake.requests_to("login")[0]
    assert login.body is not None
    assert {DEFAULT_PASSWORD, "pat-secret-value-1", json.loads(password)["token"]} <= set(known)
    assert login.body["data"]["TOKEN"] in known  # the JWT
    assert sum(1 for s in known if "hint:master" in s) == 1


# ---- fixtures ----------------------------------------------------------------------------------


def test_environment_is_isolated(tmp_path: Path) -> None:
    assert Path(os.environ["HOME"]).is_relative_to(tmp_path)
    assert Path(os.environ["XDG_CONFIG_HOME"]).is_relative_to(tmp_path)
    assert os.environ["SNOWFLAKE_DISABLE_PLATFORM_DETECTION"] == "true"
    assert "SNOWFLAKE_HOME" not in os.environ


@pytest.mark.connector
def test_snowflake_home_config_reaches_the_fake(
    snowflake_home: SnowflakeHome, fake_snowflake: FakeSnowflake
) -> None:
    snowflake_home.add_connection("other", user="bob", password=None)
    config = tomllib.loads(snowflake_home.config_file.read_text())

    assert os.environ["SNOWFLAKE_HOME"] == str(snowflake_home.path)
    assert stat.S_IMODE(snowflake_home.config_file.stat().st_mode) == 0o600
    assert config["default_connection_name"] == "fake"
    assert "password" not in config["connections"]["other"]
    params = config["connections"]["fake"]
    connect(fake_snowflake, **params, server_session_keep_alive=True).close()
    assert fake_snowflake.logins == {DEFAULT_USER: 1}
