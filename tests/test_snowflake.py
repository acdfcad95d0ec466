"""The connector adapter against the fake Snowflake, under both connector lines."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from support.fake_snowflake import (
    DEFAULT_PASSWORD,
    DEFAULT_PRIVATELINK_HOST,
    DEFAULT_REGISTRY_HOST,
    DEFAULT_REPOSITORY,
    FakeSnowflake,
    ImageRepository,
    KeyPair,
)

from spcs_registry_agent.connections import ResolvedConnection
from spcs_registry_agent.errors import ConfigError
from spcs_registry_agent.snowflake import Session, SessionGoneError, SnowflakeError

pytestmark = pytest.mark.connector


def connection(fake: FakeSnowflake, **params: Any) -> ResolvedConnection:
    return ResolvedConnection("fake", fake.connect_args(password=DEFAULT_PASSWORD) | params)


def login(fake: FakeSnowflake, **params: Any) -> Session:
    return Session.login(connection(fake, **params), login_timeout=10, request_timeout=3)


def test_issued_token_is_valid_for_the_registry_and_survives_close(
    fake_snowflake: FakeSnowflake,
) -> None:
    session = login(fake_snowflake)
    before = time.time()
    token = session.issue_token()
    session.close()
    assert token.expires_in == 3600
    assert before - 1 <= token.issued_at <= time.time()
    assert token.expires_at == token.issued_at + 3600
    assert fake_snowflake.registry_password_is_valid(token.docker_password())
    assert json.loads(token.docker_password()) == {"token": token.token, "expires_in": 3600}
    assert fake_snowflake.logouts == 0


def test_one_login_serves_many_tokens(fake_snowflake: FakeSnowflake) -> None:
    session = login(fake_snowflake)
    tokens = {session.issue_token().token for _ in range(3)}
    session.close()
    assert len(tokens) == 3
    assert fake_snowflake.logins["alice"] == 1
    assert fake_snowflake.token_requests["ISSUE"] == 3


def test_token_validity_comes_from_the_server(fake_snowflake: FakeSnowflake) -> None:
    fake_snowflake.set_validity(token=10)
    session = login(fake_snowflake)
    assert session.issue_token().expires_in == 10
    session.close()


def test_close_with_revoke_logs_out_and_kills_issued_tokens(
    fake_snowflake: FakeSnowflake,
) -> None:
    session = login(fake_snowflake)
    token = session.issue_token()
    session.close(revoke=True)
    assert fake_snowflake.logouts == 1
    assert not fake_snowflake.registry_password_is_valid(token.docker_password())


def test_registry_host_from_schema_then_account(fake_snowflake: FakeSnowflake) -> None:
    other = ImageRepository.at("acct-level.registry.snowflakecomputing.com")
    fake_snowflake.set_repositories(schema=[], account=[other])
    session = login(fake_snowflake)
    assert session.registry_host() == "acct-level.registry.snowflakecomputing.com"
    fake_snowflake.set_repositories(schema=[DEFAULT_REPOSITORY])
    assert session.registry_host() == DEFAULT_REGISTRY_HOST
    assert session.registry_host(private_link=True) == DEFAULT_PRIVATELINK_HOST
    session.close()


def test_no_repository_is_a_clear_error(fake_snowflake: FakeSnowflake) -> None:
    fake_snowflake.set_repositories()
    session = login(fake_snowflake)
    with pytest.raises(SnowflakeError, match="connection 'fake': no image repository found"):
        session.registry_host()
    session.close()


def test_wrong_password_names_the_connection_not_the_password(
    fake_snowflake: FakeSnowflake,
) -> None:
    with pytest.raises(SnowflakeError) as caught:
        login(fake_snowflake, password="wrong-password-123")
    message = str(caught.value)
    assert message.startswith("connection 'fake': login failed:")
    assert "Incorrect username or password" in message
    assert "wrong-password-123" not in message
    assert caught.value.exit_code == 1
    assert "\n" not in message


def test_expired_master_token_means_session_gone(fake_snowflake: FakeSnowflake) -> None:
    session = login(fake_snowflake)
    session.issue_token()
    fake_snowflake.expire_master_tokens()
    with pytest.raises(SessionGoneError, match="390114"):
        session.issue_token()
    session.close()


def test_revoked_session_means_session_gone(fake_snowflake: FakeSnowflake) -> None:
    session = login(fake_snowflake)
    session.issue_token()
    fake_snowflake.revoke_all_sessions()
    with pytest.raises(SessionGoneError):
        session.issue_token()
    session.close()


def test_server_error_on_token_request_is_not_session_gone(
    fake_snowflake: FakeSnowflake,
) -> None:
    session = login(fake_snowflake)
    session.issue_token()
    fake_snowflake.fail_http(503, seconds=60)
    started = time.monotonic()
    with pytest.raises(SnowflakeError) as caught:
        session.issue_token()
    assert time.monotonic() - started < 30, "the request timeout must bound retries"
    assert not isinstance(caught.value, SessionGoneError)
    fake_snowflake.clear_faults()
    session.close()


@pytest.mark.parametrize("encrypted", [False, True])
def test_key_pair_login(
    fake_snowflake: FakeSnowflake, key_pair_user: KeyPair, encrypted: bool
) -> None:
    params = fake_snowflake.connect_args() | key_pair_user.connect_args(encrypted=encrypted)
    session = Session.login(ResolvedConnection("keys", params), login_timeout=10)
    token = session.issue_token()
    session.close()
    assert fake_snowflake.registry_password_is_valid(token.docker_password())
    assert fake_snowflake.logins[key_pair_user.user] == 1


def test_key_pair_with_wrong_passphrase_is_a_usage_error(
    fake_snowflake: FakeSnowflake, key_pair_user: KeyPair
) -> None:
    params = fake_snowflake.connect_args() | key_pair_user.connect_args(encrypted=True)
    params["private_key_file_pwd"] = "not-it"
    with pytest.raises(ConfigError, match="wrong passphrase"):
        Session.login(ResolvedConnection("keys", params), login_timeout=10)
    assert not fake_snowflake.requests_to("login")


def test_key_pair_from_raw_pem_text(fake_snowflake: FakeSnowflake, key_pair_user: KeyPair) -> None:
    params = fake_snowflake.connect_args(user=key_pair_user.user) | {
        "authenticator": "SNOWFLAKE_JWT",
        "private_key_raw": key_pair_user.private_key_path.read_text(),
    }
    session = Session.login(ResolvedConnection("raw", params), login_timeout=10)
    session.issue_token()
    session.close()
    assert fake_snowflake.logins[key_pair_user.user] == 1
