"""Shared fixtures: an isolated environment for every test and a fake Snowflake on loopback."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from support.fake_snowflake import (
    FakeSnowflake,
    KeyPair,
    SnowflakeHome,
    new_rsa_key,
    write_key_pair,
)

# Variables that would let a developer's real Snowflake or Docker setup leak into a test.
_LEAKY_PREFIXES = ("SNOWFLAKE_", "SF_", "SNOWSQL_")
_LEAKY_NAMES = ("PRIVATE_KEY_PASSPHRASE", "DOCKER_CONFIG", "DOCKER_HOST", "NOTIFY_SOCKET")


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ~/.snowflake, ~/.docker and SNOWFLAKE_* settings of the developer out of tests.

    monkeypatch changes os.environ, so CLI subprocesses started by a test inherit it.
    """
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES) or name in _LEAKY_NAMES:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_STATE_HOME", ".local/state"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    # 4.x probes cloud metadata endpoints at login unless told not to.
    monkeypatch.setenv("SNOWFLAKE_DISABLE_PLATFORM_DETECTION", "true")


@pytest.fixture
def fake_snowflake() -> Iterator[FakeSnowflake]:
    """A running fake with user `alice` (password DEFAULT_PASSWORD) and one schema-level repo."""
    with FakeSnowflake() as fake:
        yield fake
        errors = fake.internal_errors
    if errors:
        pytest.fail(f"the fake Snowflake itself failed: {errors}")


@pytest.fixture
def snowflake_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_snowflake: FakeSnowflake
) -> SnowflakeHome:
    """SNOWFLAKE_HOME with a 0600 config.toml whose default connection `fake` logs alice in."""
    home = SnowflakeHome(tmp_path / "snowflake_home", fake_snowflake)
    home.add_connection("fake", default=True)
    monkeypatch.setenv("SNOWFLAKE_HOME", str(home.path))
    return home


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the whole run: generating keys is the slow part."""
    return new_rsa_key()


@pytest.fixture
def key_pair_user(
    tmp_path: Path, fake_snowflake: FakeSnowflake, rsa_key: rsa.RSAPrivateKey
) -> KeyPair:
    """User `keyuser` registered with the fake's public key; PKCS#8 key files (plain and
    passphrase-encrypted, mode 0600) under tmp_path."""
    pair = write_key_pair(tmp_path / "keys", rsa_key)
    fake_snowflake.add_user(pair.user, public_key_pem=pair.public_key_pem)
    return pair


@pytest.fixture
def snow_executable() -> str:
    """snowflake-cli's `snow` (scripts/test installs one and sets SNOW_EXECUTABLE)."""
    for candidate in (os.environ.get("SNOW_EXECUTABLE"), shutil.which("snow")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("snowflake-cli (snow) is not installed; scripts/test installs it")
