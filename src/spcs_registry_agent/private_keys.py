"""Key-pair authentication: PKCS#8 key files read as snowflake-cli reads them.

Reading the key here, not in the connector, turns an unreadable file or a wrong
passphrase into a usage error (exit 2) with one line that names the file.
"""

from __future__ import annotations

from pathlib import Path

from spcs_registry_agent import logs
from spcs_registry_agent.errors import ConfigError

_PKCS8_HEADERS = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def read_key_file(path: Path, passphrase: str | None) -> bytes:
    """The key in `path` as unencrypted PKCS#8 DER, which both connector lines accept."""
    try:
        pem = path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read private key file {path}: {exc.strerror}") from None
    return key_to_der(pem, passphrase, f"private key file {path}")


def key_to_der(pem: bytes, passphrase: str | None, source: str) -> bytes:
    """Decrypt a PKCS#8 PEM key; `source` names it in errors (never the key itself).

    As in snowflake-cli, a passphrase given for an unencrypted key is ignored, so an
    exported PRIVATE_KEY_PASSPHRASE does not break connections with plain keys.
    """
    from cryptography.hazmat.primitives import serialization

    logs.register_secret(pem.decode("ascii", "replace").strip())
    if passphrase:
        logs.register_secret(passphrase)
    stripped = pem.lstrip()
    if not stripped.startswith(_PKCS8_HEADERS):
        raise ConfigError(
            f"{source}: not a PKCS#8 PEM key (convert it with `openssl pkcs8 -topk8`)"
        )
    encrypted = stripped.startswith(_PKCS8_HEADERS[1])
    if encrypted and not passphrase:
        raise ConfigError(
            f"{source}: the key is encrypted; set PRIVATE_KEY_PASSPHRASE or private_key_file_pwd"
        )
    password = passphrase.encode() if encrypted and passphrase else None
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (TypeError, ValueError):
        problem = "wrong passphrase" if encrypted else "the key cannot be read"
        raise ConfigError(f"{source}: {problem}") from None
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
