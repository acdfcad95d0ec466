"""A protocol-level fake Snowflake for tests.

The real snowflake-connector-python (4.x pure Python and 5.x Rust core) and
snowflake-cli talk to it over plain HTTP on loopback, so tests exercise the
real login, query, token-request and logout conversation (FACTS.md "The HTTP
conversation") instead of mocking the connector.  State sits behind one lock
because the connector and the code under test call it from several threads.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import json
import os
import re
import secrets as _secrets
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DEFAULT_ACCOUNT = "TESTACCT"
DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "alice-password-7Qx9"  # a test credential, listed by secrets()
KEY_USER = "keyuser"
KEY_PASSPHRASE = "key-passphrase-4Rt8"
DEFAULT_REGISTRY_HOST = "myorg-myacct.registry.snowflakecomputing.com"
DEFAULT_PRIVATELINK_HOST = "myorg-myacct.registry.privatelink.snowflakecomputing.com"
SERVER_VERSION = "9.40.0"

Json = dict[str, Any]
RouteHandler = Callable[
    [str, Mapping[str, list[str]], Mapping[str, str], bytes], tuple[int, Mapping[str, str], bytes]
]
"""(path, query, headers with lower-case names, raw body) -> (status, headers, body)."""

# Snowflake's own messages for the codes the fake can answer with.
ERROR_MESSAGES: Mapping[str, str] = {
    "390100": "Incorrect username or password was specified.",
    "390111": "Session no longer exists.  New login required to access the service.",
    "390112": "Your session has expired. Please login again.",
    "390114": "Authentication token has expired.  The user must authenticate again.",
    "390144": "JWT token is invalid.",
}
ENDPOINTS = ("login", "query", "token", "logout", "heartbeat", "telemetry")
_AUTH_RE = re.compile(r'Snowflake Token="([^"]*)"')
_SHOW_SCHEMA_RE = re.compile(r"^show\s+image\s+repositories\s+in\s+schema\s+snowflake\.images$")
_SHOW_ACCOUNT_RE = re.compile(r"^show\s+image\s+repositories\s+in\s+account$")
_ALTER_SESSION_RE = re.compile(r"^alter\s+session\s+(set|unset)\s+")


class ManualClock:
    """A clock tests move by hand, so expiry needs no sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass(frozen=True)
class ImageRepository:
    """One row of SHOW IMAGE REPOSITORIES (column names as Snowflake returns them)."""

    name: str
    database_name: str
    schema_name: str
    repository_url: str
    privatelink_repository_url: str | None
    owner: str = "ACCOUNTADMIN"
    owner_role_type: str = "ROLE"
    comment: str = ""
    created_on: float = 1_700_000_000.0

    @classmethod
    def at(
        cls,
        host: str,
        *,
        privatelink_host: str | None = None,
        database: str = "db",
        schema: str = "schema",
        name: str = "repo",
    ) -> ImageRepository:
        """Build a row whose URLs are `<host>/db/schema/repo` like Snowflake's."""
        path = f"{database}/{schema}/{name}".lower()
        return cls(
            name=name.upper(),
            database_name=database.upper(),
            schema_name=schema.upper(),
            repository_url=f"{host}/{path}",
            privatelink_repository_url=f"{privatelink_host}/{path}" if privatelink_host else None,
        )


DEFAULT_REPOSITORY = ImageRepository.at(
    DEFAULT_REGISTRY_HOST, privatelink_host=DEFAULT_PRIVATELINK_HOST
)

_REPOSITORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("created_on", "timestamp_ltz"),
    ("name", "text"),
    ("database_name", "text"),
    ("schema_name", "text"),
    ("repository_url", "text"),
    ("owner", "text"),
    ("owner_role_type", "text"),
    ("comment", "text"),
    ("privatelink_repository_url", "text"),
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it; `outcome` is "ok", a Snowflake code or "http NNN"."""

    time: float
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    endpoint: str
    outcome: str
    user: str | None = None
    detail: str | None = None  # SQL text or token request type
    body: Json | None = None  # decoded JSON body (gunzipped); holds credentials for logins


@dataclass
class _User:
    name: str
    password: str | None
    public_key: rsa.RSAPublicKey | None
    pat: str | None


@dataclass
class _Session:
    session_id: int
    user: str
    master_token: str
    master_expires_at: float
    alive: bool = True


@dataclass
class _SessionToken:
    value: str
    session_id: int
    expires_at: float
    validity: int
    issued: bool  # True for ISSUE: a registry token


class _SnowflakeError(Exception):
    """Answer the current request with a Snowflake error code (HTTP 200)."""

    def __init__(self, code: str, *, message: str | None = None, data: Json | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, f"Error {code} (fake Snowflake).")
        self.data = data


@dataclass
class _Faults:
    http_status: int = 503
    http_count: int | None = None
    http_until: float | None = None
    http_forever: bool = False
    delay: float = 0.0
    codes: dict[str, list[str]] = field(default_factory=dict)  # endpoint -> queued codes


class FakeSnowflake:
    """An HTTP server speaking enough of Snowflake's protocol for the connector and snow."""

    def __init__(
        self,
        *,
        account: str = DEFAULT_ACCOUNT,
        token_validity: int = 3600,
        master_validity: int = 14400,
        session_validity: int = 3600,
        clock: Callable[[], float] = time.time,
        default_user: bool = True,
    ) -> None:
        """`default_user` adds DEFAULT_USER with DEFAULT_PASSWORD; `clock` decides expiry."""
        self.account = account
        self._clock = clock
        self._lock = threading.Lock()
        self._token_validity = token_validity
        self._master_validity = master_validity
        self._session_validity = session_validity
        self._users: dict[str, _User] = {}
        self._sessions: dict[int, _Session] = {}
        self._tokens: dict[str, _SessionToken] = {}
        self._masters: dict[str, int] = {}
        self._jwts: list[str] = []
        self._next_session_id = 1_000_001
        self._schema_repos: list[ImageRepository] = [DEFAULT_REPOSITORY]
        self._account_repos: list[ImageRepository] = [DEFAULT_REPOSITORY]
        self._routes: dict[tuple[str, str], RouteHandler] = {}
        self._requests: list[RecordedRequest] = []
        self._internal_errors: list[str] = []
        self._faults = _Faults()
        self._open_sockets: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if default_user:
            self.add_user(DEFAULT_USER, password=DEFAULT_PASSWORD)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeSnowflake:
        if self._server is not None:
            raise RuntimeError("FakeSnowflake already started")
        server = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            sockets = list(self._open_sockets)
            self._open_sockets.clear()
        for sock in sockets:  # kept-alive client connections would otherwise still be served
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSnowflake:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSnowflake is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connect_args(self, user: str = DEFAULT_USER, **extra: Any) -> dict[str, Any]:
        """Connector keyword arguments reaching this server (no credentials unless given)."""
        return {
            "host": self.host,
            "port": self.port,
            "protocol": "http",
            "account": self.account,
            "user": user,
            **extra,
        }

    # ---- configuration ---------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        *,
        password: str | None = None,
        public_key_pem: str | bytes | None = None,
        pat: str | None = None,
    ) -> None:
        key = None
        if public_key_pem is not None:
            pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
            loaded = serialization.load_pem_public_key(pem)
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise TypeError("FakeSnowflake supports RSA public keys only")
            key = loaded
        with self._lock:
            self._users[name.upper()] = _User(name, password, key, pat)

    def set_validity(
        self, *, token: int | None = None, master: int | None = None, session: int | None = None
    ) -> None:
        """Change lifetimes (seconds) for tokens handed out from now on."""
        with self._lock:
            if token is not None:
                self._token_validity = token
            if master is not None:
                self._master_validity = master
            if session is not None:
                self._session_validity = session

    def set_repositories(
        self,
        *,
        schema: Iterable[ImageRepository] = (),
        account: Iterable[ImageRepository] = (),
    ) -> None:
        """Rows for SHOW IMAGE REPOSITORIES IN SCHEMA snowflake.images / IN ACCOUNT."""
        with self._lock:
            self._schema_repos = list(schema)
            self._account_repos = list(account)

    def add_route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Serve an extra endpoint (e.g. a Docker registry token realm); faults skip it."""
        with self._lock:
            self._routes[(method.upper(), path)] = handler

    # ---- fault switches --------------------------------------------------------------------

    def fail_http(
        self, status: int = 503, *, count: int | None = None, seconds: float | None = None
    ) -> None:
        """Answer Snowflake endpoints with HTTP `status`: next `count` requests, for
        `seconds`, or (neither given) until clear_faults()."""
        with self._lock:
            self._faults.http_status = status
            self._faults.http_count = count
            self._faults.http_until = None if seconds is None else self._clock() + seconds
            self._faults.http_forever = count is None and seconds is None

    def delay(self, seconds: float) -> None:
        """Hold every Snowflake response for `seconds` (0 switches it off)."""
        with self._lock:
            self._faults.delay = seconds

    def fail_code(self, code: str | int, *, endpoint: str = "token", count: int = 1) -> None:
        """Answer the next `count` requests to `endpoint` with Snowflake error `code`."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {ENDPOINTS}")
        with self._lock:
            self._faults.codes.setdefault(endpoint, []).extend([str(code)] * count)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def expire_master_tokens(self) -> None:
        """Every existing master token is expired from now on (token requests get 390114)."""
        with self._lock:
            now = self._clock()
            for session in self._sessions.values():
                session.master_expires_at = min(session.master_expires_at, now)

    def revoke_all_sessions(self) -> None:
        """End every session as if each had logged out: its tokens stop working (390111)."""
        with self._lock:
            for session in self._sessions.values():
                session.alive = False

    # ---- observability ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if r.endpoint == endpoint]

    @property
    def logins(self) -> Counter[str]:
        """Successful logins per user name (as given to add_user)."""
        return Counter(r.user for r in self.requests_to("login") if r.outcome == "ok" and r.user)

    @property
    def token_requests(self) -> Counter[str]:
        """Token requests the fake answered (not HTTP faults) by requestType, failed or not."""
        return Counter(r.detail for r in self.requests_to("token") if r.detail is not None)

    @property
    def logouts(self) -> int:
        return sum(1 for r in self.requests_to("logout") if r.outcome == "ok")

    @property
    def queries(self) -> list[str]:
        """SQL text of every query the fake answered (not HTTP faults), failed or not."""
        return [r.detail for r in self.requests_to("query") if r.detail is not None]

    @property
    def unknown_requests(self) -> list[RecordedRequest]:
        return self.requests_to("unknown")

    @property
    def internal_errors(self) -> list[str]:
        """Exceptions inside the fake itself: a test should fail if this is not empty."""
        with self._lock:
            return list(self._internal_errors)

    def issued_tokens(self) -> list[str]:
        """Registry tokens handed out by ISSUE, oldest first."""
        with self._lock:
            return [t.value for t in self._tokens.values() if t.issued]

    def registry_password_is_valid(self, password: str) -> bool:
        """Would Snowflake's registry accept this Docker password (the JSON text)?"""
        try:
            parsed = json.loads(password)
        except ValueError:
            return False
        if not isinstance(parsed, dict) or set(parsed) != {"token", "expires_in"}:
            return False
        value, expires_in = parsed["token"], parsed["expires_in"]
        if not isinstance(value, str) or type(expires_in) is not int:
            return False
        with self._lock:
            token = self._tokens.get(value)
            return (
                token is not None
                and token.issued
                and token.validity == expires_in
                and token.expires_at > self._clock()
                and self._sessions[token.session_id].alive
            )

    def secrets(self) -> list[str]:
        """Every credential and token the fake knows, for leak-scanning tests."""
        with self._lock:
            found: list[str] = []
            for user in self._users.values():
                found += [s for s in (user.password, user.pat) if s]
            found += list(self._tokens)
            found += list(self._masters)
            found += self._jwts
            return found

    # ---- request handling (called from server threads) -------------------------------------

    def _handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        split = urlsplit(raw_path)
        path, query = split.path, parse_qs(split.query)
        with self._lock:
            route = self._routes.get((method, path))
        if route is not None:
            status, out_headers, out_body = route(path, query, headers, body)
            self._record(method, path, query, headers, "route", f"http {status}")
            return status, out_headers, out_body

        endpoint = _endpoint_for(method, path, query)
        delay, http_status = self._take_http_fault()
        if delay:
            time.sleep(delay)
        if http_status is not None:
            self._record(method, path, query, headers, endpoint, f"http {http_status}")
            return http_status, {"Content-Type": "text/plain"}, b"fake snowflake: injected fault"
        if endpoint == "unknown":
            self._record(method, path, query, headers, endpoint, "http 404")
            return 404, {"Content-Type": "text/plain"}, b"not found"

        request = _decode_json(body, headers)
        login_data: Json = request.get("data") or {}
        user: str | None = None
        detail = {"query": request.get("sqlText"), "token": request.get("requestType")}.get(
            endpoint
        )
        token = ""
        try:
            if endpoint == "login":
                user = str(login_data.get("LOGIN_NAME", ""))
            elif endpoint != "token":
                token = self._session_token(headers)
                user = self._user_of(token)
            injected = self._take_code(endpoint)
            if injected:
                raise _SnowflakeError(injected)
            if endpoint == "login":
                result = self._login(login_data, query)
                user = self._user_of(result["data"]["token"])
            elif endpoint == "token":
                result = self._token_request(headers, request)
            else:
                result = self._session_call(endpoint, token, detail)
            outcome = "ok"
        except _SnowflakeError as err:
            result = _error(err.code, err.message, err.data)
            outcome = err.code
        self._record(method, path, query, headers, endpoint, outcome, user, detail, request)
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()

    def _record(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        endpoint: str,
        outcome: str,
        user: str | None = None,
        detail: str | None = None,
        body: Json | None = None,
    ) -> None:
        record = RecordedRequest(
            self._clock(), method, path, query, headers, endpoint, outcome, user, detail, body
        )
        with self._lock:
            self._requests.append(record)

    def _record_internal_error(self, text: str) -> None:
        with self._lock:
            self._internal_errors.append(text)

    def _track_socket(self, sock: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._open_sockets.add(sock)
            else:
                self._open_sockets.discard(sock)

    def _take_http_fault(self) -> tuple[float, int | None]:
        with self._lock:
            faults = self._faults
            status: int | None = None
            if faults.http_forever:
                status = faults.http_status
            elif faults.http_count:
                faults.http_count -= 1
                status = faults.http_status
            elif faults.http_until is not None and self._clock() < faults.http_until:
                status = faults.http_status
            return faults.delay, status

    def _take_code(self, endpoint: str) -> str | None:
        with self._lock:
            queued = self._faults.codes.get(endpoint)
            return queued.pop(0) if queued else None

    def _login(self, data: Json, query: Mapping[str, list[str]]) -> Json:
        name = str(data.get("LOGIN_NAME", ""))
        authenticator = str(data.get("AUTHENTICATOR") or "SNOWFLAKE").upper()
        with self._lock:
            user = self._users.get(name.upper())
            if authenticator == "SNOWFLAKE_JWT":
                jwt = str(data.get("TOKEN", ""))
                self._jwts.append(jwt)
                if user is None or user.public_key is None:
                    raise _SnowflakeError("390144")
                self._check_jwt(jwt, user)
            elif authenticator == "PROGRAMMATIC_ACCESS_TOKEN":
                pat = data.get("TOKEN") or data.get("PASSWORD")
                if user is None or user.pat is None or pat != user.pat:
                    raise _SnowflakeError("390100", data=_retry_login(authenticator))
            elif authenticator == "SNOWFLAKE":
                if user is None or user.password is None or data.get("PASSWORD") != user.password:
                    raise _SnowflakeError("390100", data=_retry_login("PASSWORD"))
            else:
                raise _SnowflakeError("390100", data=_retry_login(authenticator))
            now = self._clock()
            session = _Session(
                session_id=self._next_session_id,
                user=user.name,
                master_token=_new_secret("master"),
                master_expires_at=now + self._master_validity,
            )
            self._next_session_id += 1
            self._sessions[session.session_id] = session
            self._masters[session.master_token] = session.session_id
            token = self._new_session_token(session, self._session_validity, issued=False)
            return {
                "success": True,
                "code": None,
                "message": None,
                "data": {
                    "token": token.value,
                    "validityInSeconds": self._session_validity,
                    "masterToken": session.master_token,
                    "masterValidityInSeconds": self._master_validity,
                    "displayUserName": user.name.upper(),
                    "serverVersion": SERVER_VERSION,
                    "firstLogin": False,
                    "remMeToken": None,
                    "remMeValidityInSeconds": 0,
                    "healthCheckInterval": 45,
                    "newClientForUpgrade": None,
                    "sessionId": session.session_id,
                    "idToken": None,
                    "idTokenValidityInSeconds": 0,
                    "mfaToken": None,
                    "mfaTokenValidityInSeconds": 0,
                    "responseData": None,
                    "parameters": [
                        {"name": "CLIENT_TELEMETRY_ENABLED", "value": False},
                        {"name": "TIMEZONE", "value": "UTC"},
                    ],
                    "sessionInfo": {
                        "databaseName": _first(query, "databaseName"),
                        "schemaName": _first(query, "schemaName"),
                        "warehouseName": _first(query, "warehouse"),
                        "roleName": (_first(query, "roleName") or "PUBLIC").upper(),
                    },
                },
            }

    def _check_jwt(self, jwt: str, user: _User) -> None:
        """RS256 signature against the user's key, then iss/sub/exp as Snowflake checks them."""
        assert user.public_key is not None
        try:
            header_b64, payload_b64, signature_b64 = jwt.split(".")
            header = json.loads(_b64url(header_b64))
            claims = json.loads(_b64url(payload_b64))
            user.public_key.verify(
                _b64url(signature_b64),
                f"{header_b64}.{payload_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, binascii.Error, InvalidSignature):
            raise _SnowflakeError("390144") from None
        der = user.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()
        subject = f"{self.account.upper()}.{user.name.upper()}"
        if (
            header.get("alg") != "RS256"
            or claims.get("sub") != subject
            or claims.get("iss") != f"{subject}.{fingerprint}"
            or not isinstance(claims.get("exp"), int | float)
            or claims["exp"] <= self._clock()
        ):
            raise _SnowflakeError("390144")

    def _new_session_token(
        self, session: _Session, validity: int, *, issued: bool
    ) -> _SessionToken:
        token = _SessionToken(
            value=_new_secret("issued" if issued else "session"),
            session_id=session.session_id,
            expires_at=self._clock() + validity,
            validity=validity,
            issued=issued,
        )
        self._tokens[token.value] = token
        return token

    def _token_request(self, headers: Mapping[str, str], request: Json) -> Json:
        request_type = str(request.get("requestType", "")).upper()
        master = _auth_token(headers)
        with self._lock:
            session_id = self._masters.get(master or "")
            session = self._sessions.get(session_id) if session_id is not None else None
            now = self._clock()
            if session is None or not session.alive or session.master_expires_at <= now:
                raise _SnowflakeError("390114")
            if request_type not in ("ISSUE", "RENEW"):
                raise _SnowflakeError("390400", message=f"Unknown requestType {request_type!r}.")
            validity = self._token_validity
            token = self._new_session_token(session, validity, issued=request_type == "ISSUE")
            master_left = int(session.master_expires_at - now)
            return {
                "success": True,
                "code": None,
                "message": None,
                "data": {
                    "sessionToken": token.value,
                    "validityInSecondsST": validity,
                    "masterToken": session.master_token,
                    "masterValidityInSeconds": master_left,
                    "validityInSecondsMT": master_left,
                    "sessionId": session.session_id,
                },
            }

    def _session_token(self, headers: Mapping[str, str]) -> str:
        """The caller's session: 390112 when its token expired, 390111 when it is gone."""
        value = _auth_token(headers) or ""
        with self._lock:
            token = self._tokens.get(value)
            if token is None or not self._sessions[token.session_id].alive:
                raise _SnowflakeError("390111")
            if token.expires_at <= self._clock():
                raise _SnowflakeError("390112")
        return value

    def _user_of(self, token: str) -> str:
        with self._lock:
            return self._sessions[self._tokens[token].session_id].user

    def _session_call(self, endpoint: str, token: str, sql: str | None) -> Json:
        if endpoint == "query":
            return self._query(sql or "")
        if endpoint == "logout":
            with self._lock:
                self._sessions[self._tokens[token].session_id].alive = False
            return {"success": True, "code": None, "message": None, "data": None}
        if endpoint == "telemetry":
            return {"success": True, "code": None, "message": None, "data": "Log Received"}
        return {"success": True, "code": None, "message": None, "data": None}  # heartbeat

    def _query(self, sql: str) -> Json:
        normalized = " ".join(sql.strip().rstrip(";").split()).lower()
        if _ALTER_SESSION_RE.match(normalized):
            return _result([("status", "text")], [["Statement executed successfully."]], 0x4000)
        with self._lock:
            if _SHOW_SCHEMA_RE.match(normalized):
                repos = list(self._schema_repos)
            elif _SHOW_ACCOUNT_RE.match(normalized):
                repos = list(self._account_repos)
            else:
                raise _SnowflakeError(
                    "001003",
                    message="SQL compilation error:\nstatement not supported by the fake.",
                    data=_sql_error_data("001003"),
                )
        rows = [_repository_row(repo) for repo in repos]
        return _result(_REPOSITORY_COLUMNS, rows, 0x1000)


def _endpoint_for(method: str, path: str, query: Mapping[str, list[str]]) -> str:
    if method != "POST":
        return "unknown"
    if path == "/session" and _first(query, "delete") == "true":
        return "logout"
    return {
        "/session/v1/login-request": "login",
        "/queries/v1/query-request": "query",
        "/session/token-request": "token",
        "/session/heartbeat": "heartbeat",
        "/telemetry/send": "telemetry",
    }.get(path, "unknown")


def _first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _auth_token(headers: Mapping[str, str]) -> str | None:
    match = _AUTH_RE.search(headers.get("authorization", ""))
    return match.group(1) if match else None


def _decode_json(body: bytes, headers: Mapping[str, str]) -> Json:
    if headers.get("content-encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    if not body.strip():
        return {}
    parsed = json.loads(body)
    return parsed if isinstance(parsed, dict) else {}


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_secret(kind: str) -> str:
    return f"ver:1-hint:{kind}-ETMsDgAAA{_secrets.token_urlsafe(32)}"


def _retry_login(authn_method: str) -> Json:
    return {"nextAction": "RETRY_LOGIN", "authnMethod": authn_method, "signInOptions": {}}


def _sql_error_data(code: str) -> Json:
    return {
        "internalError": False,
        "errorCode": code,
        "age": 0,
        "sqlState": "42000",
        "queryId": str(uuid.uuid4()),
        "line": -1,
        "pos": -1,
        "type": "COMPILATION",
    }


def _error(code: str, message: str, data: Json | None) -> Json:
    return {"success": False, "code": code, "message": message, "data": data, "headers": None}


def _repository_row(repo: ImageRepository) -> list[str | None]:
    return [
        f"{repo.created_on:.9f}",
        repo.name,
        repo.database_name,
        repo.schema_name,
        repo.repository_url,
        repo.owner,
        repo.owner_role_type,
        repo.comment,
        repo.privatelink_repository_url,
    ]


def _result(
    columns: Iterable[tuple[str, str]], rows: list[list[str | None]], statement_type: int
) -> Json:
    rowtype = [
        {
            "name": name,
            "database": "",
            "schema": "",
            "table": "",
            "type": kind,
            "length": 16777216 if kind == "text" else None,
            "byteLength": 16777216 if kind == "text" else None,
            "precision": 0 if kind == "timestamp_ltz" else None,
            "scale": 9 if kind == "timestamp_ltz" else None,
            "nullable": True,
            "collation": None,
        }
        for name, kind in columns
    ]
    return {
        "success": True,
        "code": None,
        "message": None,
        "data": {
            "parameters": [],
            "rowtype": rowtype,
            "rowset": rows,
            "total": len(rows),
            "returned": len(rows),
            "queryId": str(uuid.uuid4()),
            "databaseProvider": None,
            "finalDatabaseName": None,
            "finalSchemaName": None,
            "finalWarehouseName": None,
            "finalRoleName": "PUBLIC",
            "numberOfBinds": 0,
            "arrayBindSupported": False,
            "statementTypeId": statement_type,
            "version": 1,
            "sendResultTime": int(time.time() * 1000),
            "queryResultFormat": "json",
        },
    }


class _QuietServer(ThreadingHTTPServer):
    """Daemon threads, and no traceback on stderr when a client drops its connection."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _make_handler(fake: FakeSnowflake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60

        def setup(self) -> None:
            super().setup()
            fake._track_socket(self.connection, open_=True)

        def finish(self) -> None:
            fake._track_socket(self.connection, open_=False)
            super().finish()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, out_headers, out_body = fake._handle(self.command, self.path, headers, body)
            except Exception as exc:  # a bug in the fake: surface it through internal_errors
                fake._record_internal_error(f"{self.command} {self.path}: {exc!r}")
                status, out_headers, out_body = 500, {}, b"fake snowflake internal error"
            self.send_response(status)
            for name, value in out_headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(out_body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out_body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the per-request stderr lines."""

    return Handler


class SnowflakeHome:
    """A SNOWFLAKE_HOME directory whose config.toml has connections pointing at a fake."""

    def __init__(self, path: Path, fake: FakeSnowflake) -> None:
        self.path = path
        self.config_file = path / "config.toml"
        self._fake = fake
        self._default: str | None = None
        self._connections: dict[str, dict[str, str | int | bool]] = {}

    def add_connection(
        self, name: str = "fake", *, default: bool = False, **params: str | int | bool | None
    ) -> dict[str, str | int | bool]:
        """Write `[connections.NAME]`: host/port/protocol/account of the fake, user alice with
        her password, then `params` on top (None drops a key). Returns the table written."""
        table: dict[str, str | int | bool] = {
            "host": self._fake.host,
            "port": self._fake.port,
            "protocol": "http",
            "account": self._fake.account,
            "user": DEFAULT_USER,
            "password": DEFAULT_PASSWORD,
        }
        for key, value in params.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        self._connections[name] = table
        if default:
            self._default = name
        self._write()
        return dict(table)

    def _write(self) -> None:
        lines = (
            [] if self._default is None else [f"default_connection_name = {_toml(self._default)}"]
        )
        for name, table in self._connections.items():
            key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml(name)
            lines += ["", f"[connections.{key}]"]
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(self.config_file, ("\n".join(lines) + "\n").encode())


@dataclass(frozen=True)
class KeyPair:
    """Key files for a key-pair (SNOWFLAKE_JWT) user: PKCS#8 PEM, plain and encrypted."""

    user: str
    private_key_path: Path
    encrypted_private_key_path: Path
    passphrase: str = field(repr=False)
    public_key_pem: str

    def connect_args(self, *, encrypted: bool = False) -> dict[str, str]:
        """Connector keyword arguments for this key (add the fake's connect_args)."""
        args = {"authenticator": "SNOWFLAKE_JWT", "user": self.user}
        if encrypted:
            args["private_key_file"] = str(self.encrypted_private_key_path)
            args["private_key_file_pwd"] = self.passphrase
        else:
            args["private_key_file"] = str(self.private_key_path)
        return args


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_key_pair(
    directory: Path,
    key: rsa.RSAPrivateKey,
    *,
    user: str = KEY_USER,
    passphrase: str = KEY_PASSPHRASE,
) -> KeyPair:
    """Write `key` as rsa_key.p8 (plain) and rsa_key_encrypted.p8 (mode 0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    plain, encrypted = directory / "rsa_key.p8", directory / "rsa_key_encrypted.p8"
    pkcs8, pem = serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM
    _write_private(plain, key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    _write_private(
        encrypted,
        key.private_bytes(pem, pkcs8, serialization.BestAvailableEncryption(passphrase.encode())),
    )
    public = key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(user, plain, encrypted, passphrase, public.decode())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)


def _toml(value: str | int | bool) -> str:
    """TOML literal for the scalars a connection uses (JSON string escapes are valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)
