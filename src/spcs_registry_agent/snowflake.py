"""The only module that talks to snowflake-connector-python.

It hides the differences between the connector's 4.x line (pure Python, the
one snowflake-cli pins) and its 5.x line (Rust core), so that the rest of the
agent sees a kept session that issues registry tokens.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import snowflake.connector
import structlog
from snowflake.connector.errors import Error as ConnectorError

from spcs_registry_agent import logs, private_keys
from spcs_registry_agent.connections import ResolvedConnection, is_secret_key
from spcs_registry_agent.errors import AgentError
from spcs_registry_agent.revoke import SESSION_GONE_CODES

log = structlog.get_logger(__name__)

#: Snowflake's documented lifetime of a registry token, used only when a
#: connector does not report one.
DEFAULT_TOKEN_VALIDITY = 3600


_SCHEMA_REPOSITORIES = "show image repositories in schema snowflake.images"
_ACCOUNT_REPOSITORIES = "show image repositories in account"
_ERROR_PREFIX = re.compile(r"^\d{6} \(\w+\): ")
_CONNECTOR_MAJOR = int(snowflake.connector.__version__.split(".")[0])


class SnowflakeError(AgentError):
    """Snowflake refused or could not be reached; the message names the connection."""


class SessionGoneError(SnowflakeError):
    """The kept session can no longer issue tokens: log in again."""


@dataclass(frozen=True)
class RegistryToken:
    """A registry token and when it stops working.

    `issued_at` is taken before the request is sent, so `expires_at` errs on
    the early side.
    """

    token: str = field(repr=False)
    expires_in: int
    issued_at: float

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.expires_in

    def as_dict(self) -> dict[str, Any]:
        """The object `snow spcs image-registry token` prints."""
        return {"token": self.token, "expires_in": self.expires_in}

    def docker_password(self) -> str:
        """Docker's password for `0sessiontoken`: the whole JSON object, as snow uses it."""
        return json.dumps(self.as_dict())


class Session:
    """A Snowflake login kept open so that tokens can be issued without logging in again.

    The session is never logged out unless asked (`close(revoke=True)`):
    logging out revokes every token it issued, including the one Docker holds.
    """

    def __init__(self, connection_name: str, connection: Any) -> None:
        self.connection_name = connection_name
        self._connection = connection
        self._json_results = False

    @classmethod
    def login(
        cls,
        connection: ResolvedConnection,
        *,
        login_timeout: float = 60.0,
        request_timeout: float = 60.0,
    ) -> Session:
        """Log in once; `request_timeout` bounds every later request, retries included."""
        name = (
            "temporary connection" if connection.name is None else f"connection {connection.name!r}"
        )
        kwargs = _connect_arguments(connection.params, login_timeout, request_timeout)
        started = time.monotonic()
        with _connector_errors(name, "login failed"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = snowflake.connector.connect(**kwargs)
        log.info(
            "snowflake_logged_in",
            connection=connection.name or "temporary",
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return cls(name, handle)

    def issue_token(self) -> RegistryToken:
        """ISSUE a new session token on the kept session: the registry token."""
        self._use_json_results()
        issued_at = time.time()
        with _connector_errors(self.connection_name, "token request failed"):
            response = self._rest()._token_request("ISSUE")
        data = response.get("data") or {}
        token = data.get("sessionToken")
        if not token:
            raise SnowflakeError(f"{self.connection_name}: token request returned no token")
        logs.register_secret(token)
        validity = data.get("validityInSecondsST")
        expires_in = int(validity) if validity is not None else DEFAULT_TOKEN_VALIDITY
        return RegistryToken(token=token, expires_in=expires_in, issued_at=issued_at)

    def registry_host(self, *, private_link: bool = False) -> str:
        """The registry host, found as snow finds it: schema snowflake.images, then the account."""
        row = self._first_repository(_SCHEMA_REPOSITORIES) or self._first_repository(
            _ACCOUNT_REPOSITORIES
        )
        if row is None:
            raise SnowflakeError(
                f"{self.connection_name}: no image repository found; switch to a role with "
                "read access to at least one image repository or create one first"
            )
        column = "privatelink_repository_url" if private_link else "repository_url"
        url = row.get(column)
        if not url:
            raise SnowflakeError(f"{self.connection_name}: the image repository has no {column}")
        return _host_of(str(url))

    def close(self, *, revoke: bool = False) -> None:
        """Drop the connection; with `revoke`, log the session out so its tokens stop working."""
        if revoke:
            with _connector_errors(self.connection_name, "logout failed"):
                self._log_out()
        with _connector_errors(self.connection_name, "close failed"):
            self._connection.close()

    def _log_out(self) -> None:
        # The session was opened with server_session_keep_alive, so close() alone
        # never logs out; each line has its own way to send the logout request.
        rest = self._rest()
        if _CONNECTOR_MAJOR >= 5:
            rest.request("/session?delete=true", method="post", client="rest")
        else:
            rest.delete_session(retry=False)

    def _rest(self) -> Any:
        # 5.x keeps `rest` for compatibility only and warns; it is still the one way to ISSUE.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._connection.rest

    def _use_json_results(self) -> None:
        # snowflake-cli sets this before ISSUE (server-side workaround SNOW-841699).
        # It is a session parameter: once per session is enough.
        if not self._json_results:
            self._execute("alter session set PYTHON_CONNECTOR_QUERY_RESULT_FORMAT = 'json'")
            self._json_results = True

    def _first_repository(self, sql: str) -> dict[str, Any] | None:
        rows = self._execute(sql)
        return rows[0] if rows else None

    def _execute(self, sql: str) -> list[dict[str, Any]]:
        with _connector_errors(self.connection_name, "query failed"):
            cursor = self._connection.cursor(snowflake.connector.DictCursor)
            try:
                cursor.execute(sql)
                return list(cursor.fetchall())
            finally:
                cursor.close()


def _connect_arguments(
    params: Mapping[str, Any], login_timeout: float, request_timeout: float
) -> dict[str, Any]:
    """Connector keyword arguments: the resolved connection plus what keeps tokens alive."""
    kwargs = dict(params)
    key_file = kwargs.pop("private_key_file", None)
    key_text = kwargs.pop("private_key_raw", None)
    passphrase = kwargs.pop("private_key_file_pwd", None)
    if key_file is not None:
        kwargs["private_key"] = private_keys.read_key_file(Path(key_file), passphrase)
    elif key_text is not None:
        kwargs["private_key"] = private_keys.key_to_der(
            str(key_text).encode(), passphrase, "private_key_raw"
        )
    for key, value in kwargs.items():
        if value and is_secret_key(key) and isinstance(value, str):
            logs.register_secret(value)
    kwargs.setdefault("login_timeout", int(login_timeout))
    # 4.x retries a failing token request forever unless this is set.
    kwargs.setdefault("network_timeout", int(request_timeout))
    kwargs.setdefault("application", "spcs-registry-agent")
    # Never delete the session on close: it would revoke the token handed to Docker.
    kwargs["server_session_keep_alive"] = True
    kwargs.setdefault("client_session_keep_alive", False)
    if _CONNECTOR_MAJOR >= 5:
        kwargs.setdefault("enable_server_session_keep_alive_auto_detection", False)
    return kwargs


def _host_of(url: str) -> str:
    return urlsplit(url if "//" in url else f"//{url}").netloc


@contextmanager
def _connector_errors(name: str, action: str) -> Iterator[None]:
    """Turn connector exceptions of both lines into our one-line, secret-free errors."""
    try:
        yield
    except ConnectorError as exc:
        raise _classify(name, action, exc.errno, exc.msg or str(exc)) from None
    except Exception as exc:
        # 4.x raises network.ReauthenticationRequest (a bare Exception) wrapping the cause.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ConnectorError):
            raise _classify(name, action, cause.errno, cause.msg or str(cause)) from None
        if isinstance(exc, AgentError):
            raise
        raise SnowflakeError(f"{name}: {action}: {type(exc).__name__}: {exc}") from None


def _classify(name: str, action: str, errno: int | None, message: str) -> SnowflakeError:
    # Connector messages may start with "390100 (28000): " and span lines.
    reason = _ERROR_PREFIX.sub("", " ".join(str(message).split()))
    code = f" (code {errno})" if errno and errno > 0 and str(errno) not in reason else ""
    text = f"{name}: {action}: {reason}{code}"
    if str(errno) in SESSION_GONE_CODES:
        return SessionGoneError(text)
    return SnowflakeError(text)
