"""Kept sessions are shared per connection and closed by the last target to leave."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from spcs_registry_agent.connections import ResolvedConnection
from spcs_registry_agent.errors import AgentError
from spcs_registry_agent.sessions import SessionPool, connection_key
from spcs_registry_agent.snowflake import RegistryToken, SessionGoneError

PROD = ResolvedConnection("prod", {"account": "acct", "user": "alice", "password": "pw-1"})
DEV = ResolvedConnection("dev", {"account": "acct", "user": "bob", "password": "pw-2"})


class FakeSession:
    def __init__(self, log: Login, number: int) -> None:
        self.log = log
        self.number = number
        self.gone = False

    def issue_token(self) -> RegistryToken:
        if self.gone:
            raise SessionGoneError("session gone (code 390114)")
        self.log.issued[self.number] += 1
        return RegistryToken(token=f"t{self.number}", expires_in=3600, issued_at=0.0)

    def registry_host(self, *, private_link: bool = False) -> str:
        return "private.example" if private_link else "public.example"

    def close(self, *, revoke: bool = False) -> None:
        self.log.closed.append((self.number, revoke))


class Login:
    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.issued: Counter[int] = Counter()
        self.closed: list[tuple[int, bool]] = []

    def __call__(self, connection: ResolvedConnection) -> FakeSession:
        session = FakeSession(self, len(self.sessions))
        self.sessions.append(session)
        return session


@pytest.fixture
def login() -> Login:
    return Login()


def test_one_login_per_connection_shared_by_its_targets(login: Login) -> None:
    pool = SessionPool(login)
    pool.join("public", PROD)
    pool.join("private", PROD)
    pool.join("dev", DEV)
    assert not pool.logged_in(PROD)
    pool.issue_token(PROD)
    pool.issue_token(PROD)
    assert pool.registry_host(PROD, private_link=True) == "private.example"
    pool.issue_token(DEV)
    assert len(login.sessions) == 2
    assert login.issued == Counter({0: 2, 1: 1})
    assert pool.logged_in(PROD)


def test_a_changed_secret_is_another_connection() -> None:
    changed = ResolvedConnection("prod", {**PROD.params, "password": "pw-new"})
    assert connection_key(changed) != connection_key(PROD)
    assert connection_key(ResolvedConnection("prod", dict(PROD.params))) == connection_key(PROD)


def test_the_last_target_to_leave_closes_and_only_it_may_revoke(login: Login) -> None:
    pool = SessionPool(login)
    pool.join("public", PROD)
    pool.join("private", PROD)
    pool.issue_token(PROD)
    pool.leave("private", PROD, revoke=True)
    assert login.closed == [], "revoking would kill the token the other target holds"
    pool.leave("public", PROD, revoke=True)
    assert login.closed == [(0, True)]
    with pytest.raises(AgentError, match="no target uses this connection"):
        pool.issue_token(PROD)


def test_leaving_without_a_login_closes_nothing(login: Login) -> None:
    pool = SessionPool(login)
    pool.join("public", PROD)
    pool.leave("public", PROD, revoke=False)
    pool.leave("never-joined", DEV, revoke=False)
    assert login.sessions == []
    assert login.closed == []


def test_a_gone_session_is_replaced_by_exactly_one_new_login(login: Login) -> None:
    pool = SessionPool(login)
    pool.join("public", PROD)
    pool.issue_token(PROD)
    login.sessions[0].gone = True
    token = pool.issue_token(PROD)
    assert token.token == "t1"
    assert login.closed == [(0, False)]
    assert len(login.sessions) == 2


def test_concurrent_requests_on_one_session_are_serialised(login: Login) -> None:
    pool = SessionPool(login)
    pool.join("public", PROD)
    threads = [threading.Thread(target=pool.issue_token, args=(PROD,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(login.sessions) == 1
    assert login.issued == Counter({0: 8})
