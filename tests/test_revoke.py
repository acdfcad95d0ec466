"""revoke: logging a registry token's session out, against the fake Snowflake."""

from __future__ import annotations

import json

import pytest
from support.fake_snowflake import DEFAULT_PASSWORD, FakeSnowflake

from spcs_registry_agent.connections import ResolvedConnection
from spcs_registry_agent.errors import AgentError
from spcs_registry_agent.revoke import revoke_token, snowflake_url, token_of


def test_snowflake_url_defaults_like_the_connector() -> None:
    assert snowflake_url({"account": "org-acct"}) == "https://org-acct.snowflakecomputing.com:443"
    assert snowflake_url({"host": "127.0.0.1", "port": 8080, "protocol": "http"}) == (
        "http://127.0.0.1:8080"
    )


def test_token_of_a_docker_password() -> None:
    assert token_of(json.dumps({"token": "abc", "expires_in": 3600})) == "abc"
    for bad in ("abc", "[]", '{"token": ""}'):
        with pytest.raises(AgentError, match="not a registry token"):
            token_of(bad)


@pytest.mark.connector
def test_revoke_ends_the_session_of_the_token(fake_snowflake: FakeSnowflake) -> None:
    from spcs_registry_agent.snowflake import Session

    params = fake_snowflake.connect_args(password=DEFAULT_PASSWORD)
    session = Session.login(ResolvedConnection("fake", params))
    try:
        issued = session.issue_token()
    finally:
        session.close()
    assert fake_snowflake.registry_password_is_valid(issued.docker_password())
    assert revoke_token(params, issued.token, timeout=10) is True
    assert not fake_snowflake.registry_password_is_valid(issued.docker_password())
    assert fake_snowflake.logouts == 1
    assert revoke_token(params, issued.token, timeout=10) is False  # already gone


def test_revoke_against_nothing_is_one_line() -> None:
    params = {"host": "127.0.0.1", "port": 1, "protocol": "http"}
    with pytest.raises(AgentError, match=r"^cannot log the session out at http://127\.0\.0\.1:1: "):
        revoke_token(params, "tok", timeout=5)
