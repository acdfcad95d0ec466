"""The token service of a test Docker registry, served by the fake Snowflake.

`docker-registry` in token-auth mode sends clients to this realm with Basic credentials;
it answers with a JWT the registry trusts only if the credentials are `0sessiontoken` and
the JSON password of a registry token the fake Snowflake issued, unexpired, from a live
session. So the registry accepts exactly what Snowflake's registry would.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from spcs_registry_agent.docker_credentials import USERNAME
from support.fake_snowflake import FakeSnowflake

REALM_PATH = "/registry/token"
SERVICE = "spcs-test-registry"
ISSUER = "fake-snowflake"
JWT_LIFETIME = 300


class TokenRealm:
    """Checks registry logins against the fake Snowflake and signs registry JWTs."""

    def __init__(self, fake: FakeSnowflake) -> None:
        self._fake = fake
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token realm")])
        now = dt.datetime.now(dt.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .sign(self._key, hashes.SHA256())
        )
        self._lock = threading.Lock()
        self.granted = 0
        self.refused = 0
        fake.add_route("GET", REALM_PATH, self.handle)

    @property
    def url(self) -> str:
        return f"{self._fake.url}{REALM_PATH}"

    def write_cert_bundle(self, path: Path) -> Path:
        """The registry's `rootcertbundle`: the certificate our JWTs carry in `x5c`."""
        path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        return path

    def handle(
        self, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        """GET realm?service=...&scope=... with Basic credentials -> {"token": JWT}."""
        user, password = _basic(headers.get("authorization", ""))
        if user != USERNAME or not self._fake.registry_password_is_valid(password):
            with self._lock:
                self.refused += 1
            error = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            return 401, {"Content-Type": "application/json"}, json.dumps(error).encode()
        with self._lock:
            self.granted += 1
        token = self._jwt(user, query.get("scope", []))
        answer = {"token": token, "access_token": token, "expires_in": JWT_LIFETIME}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()

    def _jwt(self, subject: str, scopes: list[str]) -> str:
        now = int(dt.datetime.now(dt.timezone.utc).timestamp())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + JWT_LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [_access(scope) for scope in scopes],
        }
        signing_input = f"{_b64url(header)}.{_b64url(claims)}".encode()
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode() + "." + _b64(signature)


def _access(scope: str) -> dict[str, object]:
    """`repository:name/with/parts:pull,push` -> the grant the registry checks (all granted)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return user, password


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url(value: object) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())
