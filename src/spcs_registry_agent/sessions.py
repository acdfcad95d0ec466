"""Kept Snowflake sessions: one per distinct connection, shared by the targets that use it.

Two registries reached through the same connection (its public and its private-link host,
say) must not cost two logins, and dropping one of them must not log out the session the
other's token came from: a session is closed only when the last target lets go of it.
Sessions are logged in lazily, on the first token, and again only when Snowflake says the
session is gone (master token expired, session revoked).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from spcs_registry_agent.connections import ResolvedConnection
from spcs_registry_agent.errors import AgentError
from spcs_registry_agent.snowflake import RegistryToken, SessionGoneError

log = structlog.get_logger(__name__)

#: Connections are equal when every parameter is: secrets included, so a changed password
#: is a new session. Values are reprs because connection values need not be hashable.
ConnectionKey = tuple[tuple[str, str], ...]


class SessionLike(Protocol):
    """What the agent needs of snowflake.Session (fakes implement it in tests)."""

    def issue_token(self) -> RegistryToken: ...
    def registry_host(self, *, private_link: bool = False) -> str: ...
    def close(self, *, revoke: bool = False) -> None: ...


def connection_key(connection: ResolvedConnection) -> ConnectionKey:
    return tuple(sorted((key, repr(value)) for key, value in connection.params.items()))


@dataclass(eq=False)
class _Shared:
    """One connection's session; `lock` serialises its requests, login included."""

    connection: ResolvedConnection
    session: SessionLike | None = None
    users: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def label(self) -> str:
        return self.connection.name or "inline"


class SessionPool:
    """The agent's sessions, keyed by connection; targets `join` and `leave` them."""

    def __init__(self, login: Callable[[ResolvedConnection], SessionLike]) -> None:
        self._login = login
        self._lock = threading.Lock()  # guards _shared
        self._shared: dict[ConnectionKey, _Shared] = {}

    def join(self, user: str, connection: ResolvedConnection) -> None:
        with self._lock:
            shared = self._shared.setdefault(connection_key(connection), _Shared(connection))
            shared.users.add(user)

    def issue_token(self, connection: ResolvedConnection) -> RegistryToken:
        """A token from the kept session, logging in first (or again) only when needed."""
        shared = self._get(connection)
        with shared.lock:
            session = self._session(shared)
            try:
                return session.issue_token()
            except SessionGoneError as error:
                log.info("snowflake_session_gone", connection=shared.label, reason=str(error))
                shared.session = None
                _close(shared.label, session, revoke=False)
                return self._session(shared).issue_token()

    def registry_host(self, connection: ResolvedConnection, *, private_link: bool) -> str:
        shared = self._get(connection)
        with shared.lock:
            return self._session(shared).registry_host(private_link=private_link)

    def logged_in(self, connection: ResolvedConnection) -> bool:
        with self._lock:
            shared = self._shared.get(connection_key(connection))
        return shared is not None and shared.session is not None

    def leave(self, user: str, connection: ResolvedConnection, *, revoke: bool) -> None:
        """`user` is done with the session; the last one out closes it (or logs it out)."""
        key = connection_key(connection)
        with self._lock:
            shared = self._shared.get(key)
            if shared is None:
                return
            shared.users.discard(user)
            if shared.users:
                return
            del self._shared[key]
        with shared.lock:
            session, shared.session = shared.session, None
            if session is not None:
                _close(shared.label, session, revoke=revoke)

    def _get(self, connection: ResolvedConnection) -> _Shared:
        with self._lock:
            shared = self._shared.get(connection_key(connection))
        if shared is None:
            raise AgentError(f"{connection.describe()}: no target uses this connection any more")
        return shared

    def _session(self, shared: _Shared) -> SessionLike:
        if shared.session is None:
            shared.session = self._login(shared.connection)
        return shared.session


def _close(label: str, session: SessionLike, *, revoke: bool) -> None:
    try:
        session.close(revoke=revoke)
    except AgentError as error:
        log.warning("snowflake_close_failed", connection=label, reason=str(error))
    else:
        if revoke:
            log.info("snowflake_session_revoked", connection=label)
