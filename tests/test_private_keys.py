"""Key files: what snowflake-cli accepts, and one-line usage errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.fake_snowflake import KeyPair, write_key_pair

from spcs_registry_agent.errors import ConfigError
from spcs_registry_agent.private_keys import key_to_der, read_key_file


@pytest.fixture
def keys(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> KeyPair:
    return write_key_pair(tmp_path / "keys", rsa_key)


def _der(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_plain_key_becomes_der(keys: KeyPair, rsa_key: rsa.RSAPrivateKey) -> None:
    assert read_key_file(keys.private_key_path, None) == _der(rsa_key)


def test_encrypted_key_is_decrypted(keys: KeyPair, rsa_key: rsa.RSAPrivateKey) -> None:
    assert read_key_file(keys.encrypted_private_key_path, keys.passphrase) == _der(rsa_key)


def test_passphrase_for_a_plain_key_is_ignored_as_snow_does(
    keys: KeyPair, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert read_key_file(keys.private_key_path, "exported-elsewhere") == _der(rsa_key)


def test_wrong_passphrase_is_a_usage_error_without_the_passphrase(keys: KeyPair) -> None:
    with pytest.raises(ConfigError, match="wrong passphrase") as caught:
        read_key_file(keys.encrypted_private_key_path, "not-the-passphrase")
    assert "not-the-passphrase" not in str(caught.value)
    assert str(keys.encrypted_private_key_path) in str(caught.value)
    assert caught.value.exit_code == 2


def test_encrypted_key_without_passphrase(keys: KeyPair) -> None:
    with pytest.raises(ConfigError, match="encrypted"):
        read_key_file(keys.encrypted_private_key_path, None)


def test_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read private key file .*missing\.p8"):
        read_key_file(tmp_path / "missing.p8", None)


def test_traditional_rsa_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(ConfigError, match="not a PKCS#8"):
        key_to_der(pem, None, "private_key_raw")


def test_garbage_key_never_echoes_its_content() -> None:
    with pytest.raises(ConfigError) as caught:
        key_to_der(b"-----BEGIN PRIVATE KEY-----\nSECRETGARBAGE\n", None, "private_key_raw")
    assert "SECRETGARBAGE" not in str(caught.value)
