"""End-to-end harness: a real dockerd, docker-registry (token auth against the fake
Snowflake), skopeo and pass, started once per test session and stopped by PID.

Scenarios drive the real CLI as a subprocess and check the outcome with the docker CLI
and skopeo, using only what the CLI wrote. They skip (with the missing Debian packages
named) only where the binaries are not installed; CI installs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.components import (
    Dockerd,
    PassStore,
    Registry,
    missing_binaries,
    pass_store,
    running_dockerd,
    running_registry,
)
from support.fake_snowflake import DEFAULT_REPOSITORY, FakeSnowflake, SnowflakeHome
from support.processes import CLI
from support.token_realm import TokenRealm

COMMAND_TIMEOUT = 120


@pytest.fixture(scope="session")
def e2e_root() -> Iterator[Path]:
    """A short directory under /tmp (unix socket paths are limited to 108 bytes)."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"e2e needs real components, not installed: {', '.join(missing)}")
    root = Path(tempfile.mkdtemp(prefix="sra-e2e-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def e2e_snowflake(e2e_root: Path) -> Iterator[FakeSnowflake]:
    """One fake Snowflake for the session: the registry's realm lives on it."""
    with FakeSnowflake() as fake:
        yield fake


@pytest.fixture(scope="session")
def registry(e2e_root: Path, e2e_snowflake: FakeSnowflake) -> Iterator[Registry]:
    with running_registry(e2e_root / "registry", TokenRealm(e2e_snowflake)) as running:
        yield running


@pytest.fixture(scope="session")
def dockerd(e2e_root: Path) -> Iterator[Dockerd]:
    with running_dockerd(e2e_root / "d") as engine:
        yield engine


@pytest.fixture(scope="session")
def passwords(e2e_root: Path) -> Iterator[PassStore]:
    with pass_store(e2e_root / "pass") as store:
        yield store


@pytest.fixture(scope="session")
def tiny_tarball(e2e_root: Path) -> Path:
    """A one-file root filesystem for `docker import`: the smallest real image."""
    tree = e2e_root / "tiny"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello from spcs-registry-agent e2e\n")
    tarball = e2e_root / "tiny.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tarball), "."], check=True)
    return tarball


@dataclass
class E2E:
    """One scenario's world: its own HOME, Snowflake connection and Docker config."""

    env: dict[str, str]
    docker_config: Path
    registry: Registry
    dockerd: Dockerd
    snowflake: FakeSnowflake
    passwords: PassStore
    tiny_tarball: Path
    history: list[list[str]] = field(default_factory=list)

    def run(
        self,
        *command: str,
        env: Mapping[str, str] | None = None,
        input_: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        self.history.append(list(command))
        done = subprocess.run(
            command,
            env={**self.env, **(env or {})},
            input=input_,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if check and done.returncode != 0:
            pytest.fail(f"{command} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI, as a user runs it."""
        return self.run(*CLI, *args, env=env)

    def login(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`login --registry <the test registry>`; must succeed."""
        done = self.cli("login", "--registry", self.registry.host, *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "Login Succeeded"
        return done

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("docker", *args, check=check)

    def image(self, name: str) -> str:
        return f"{self.registry.host}/{name}"

    def push_tiny(self, name: str) -> str:
        """Import the tiny tarball as `name` and push it with the written config."""
        ref = self.image(name)
        self.docker("import", str(self.tiny_tarball), ref)
        self.docker("push", ref)
        return ref


@pytest.fixture
def e2e(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    e2e_snowflake: FakeSnowflake,
    registry: Registry,
    dockerd: Dockerd,
    passwords: PassStore,
    tiny_tarball: Path,
) -> Iterator[E2E]:
    """A connection to the fake, DOCKER_CONFIG and DOCKER_HOST of this test only.

    The session's fake Snowflake gets its defaults back afterwards.
    """
    home = SnowflakeHome(tmp_path / "snowflake", e2e_snowflake)
    home.add_connection("fake", default=True)
    docker_config = tmp_path / "docker-config"
    env = {
        **os.environ,
        **passwords.env,
        "SNOWFLAKE_HOME": str(home.path),
        "DOCKER_CONFIG": str(docker_config),
        "DOCKER_HOST": dockerd.host,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # in-process calls (store_credentials) see the same
    fake_errors = len(e2e_snowflake.internal_errors)
    yield E2E(env, docker_config, registry, dockerd, e2e_snowflake, passwords, tiny_tarball)
    e2e_snowflake.set_validity(token=3600)
    e2e_snowflake.set_repositories(schema=[DEFAULT_REPOSITORY], account=[DEFAULT_REPOSITORY])
    e2e_snowflake.clear_faults()
    if len(e2e_snowflake.internal_errors) > fake_errors:
        pytest.fail(f"the fake Snowflake failed: {e2e_snowflake.internal_errors[fake_errors:]}")
