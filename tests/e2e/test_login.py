"""`login`/`logout` against a real dockerd, docker-registry (token auth), skopeo and pass.

Each scenario runs the real CLI as a subprocess, then proves the outcome with the docker
CLI or skopeo using nothing but what the CLI wrote.
"""

from __future__ import annotations

import base64
import json
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.components import Registry, running_registry
from support.config_watch import watching
from support.fake_snowflake import ImageRepository
from support.readonly import read_only

from e2e.conftest import E2E
from spcs_registry_agent.docker_credentials import USERNAME, store_credentials

pytestmark = pytest.mark.e2e

OTHER_ENTRY = {"auth": base64.b64encode(b"someone:else").decode()}


def config_path(e2e: E2E) -> Path:
    return e2e.docker_config / "config.json"


def write_config(e2e: E2E, config: dict[str, Any]) -> bytes:
    e2e.docker_config.mkdir(mode=0o700, exist_ok=True)
    config_path(e2e).write_text(json.dumps(config, indent=2))
    config_path(e2e).chmod(0o600)
    return config_path(e2e).read_bytes()


def stored_password(e2e: E2E, host: str) -> str:
    auths = json.loads(config_path(e2e).read_text())["auths"]
    user, _, password = base64.b64decode(auths[host]["auth"]).decode().partition(":")
    assert user == USERNAME
    return password


def one_line_error(done: Any, exit_code: int = 1) -> str:
    """The CLI failed with `exit_code` and said so in exactly one line."""
    assert done.returncode == exit_code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    return str(lines[0])


def token_password(e2e: E2E) -> str:
    """A valid Docker password from `token --format JSON`, as snow users get one."""
    done = e2e.cli("token", "--format", "JSON")
    assert done.returncode == 0, done.stderr
    issued = json.loads(done.stdout)
    return json.dumps({"token": issued["token"], "expires_in": issued["expires_in"]})


# --- where Docker reads ------------------------------------------------------------------


def test_login_then_docker_push_and_pull_with_only_the_written_config(e2e: E2E) -> None:
    granted = e2e.registry.realm.granted
    e2e.login("--verify", "engine")
    assert stat.S_IMODE(config_path(e2e).stat().st_mode) == 0o600
    assert stat.S_IMODE(e2e.docker_config.stat().st_mode) == 0o700
    assert e2e.snowflake.registry_password_is_valid(stored_password(e2e, e2e.registry.host))
    ref = e2e.push_tiny("e2e/tiny:push")
    e2e.docker("rmi", ref)
    e2e.docker("pull", ref)
    assert e2e.registry.realm.granted > granted
    assert e2e.snowflake.logouts == 0  # the session (and so the token) lives on


def test_skopeo_uses_the_written_config_as_authfile(e2e: E2E) -> None:
    """No engine involved at all: verification by the registry's own handshake."""
    e2e.login("--verify", "registry")
    repo = f"docker://{e2e.registry.host}/e2e/skopeo"
    tls = "--dest-tls-verify=false"
    auth = str(config_path(e2e))
    e2e.run("skopeo", "copy", "--dest-authfile", auth, tls, f"tarball:{e2e.tiny_tarball}",
            f"{repo}:v1", check=True)  # fmt: skip
    listed = e2e.run("skopeo", "list-tags", "--authfile", auth, "--tls-verify=false", repo)
    assert json.loads(listed.stdout)["Tags"] == ["v1"], listed.stderr


def test_discovered_registry_host_gets_the_entry(e2e: E2E) -> None:
    e2e.snowflake.set_repositories(schema=[ImageRepository.at(e2e.registry.host)])
    done = e2e.cli("login")
    assert done.returncode == 0, done.stderr
    assert e2e.snowflake.registry_password_is_valid(stored_password(e2e, e2e.registry.host))
    done = e2e.cli("logout")
    assert done.stdout.strip() == f"Removing login credentials for {e2e.registry.host}"
    assert json.loads(config_path(e2e).read_text())["auths"] == {}


@pytest.mark.parametrize("configured", ["credsStore", "credHelpers"])
def test_pass_helper_holds_the_secret_and_docker_pulls(e2e: E2E, configured: str) -> None:
    """`credsStore` for every host, or `credHelpers` for this host only: the secret goes to
    pass, config.json stays byte-for-byte as it was, and docker finds the credentials."""
    if configured == "credsStore":
        config: dict[str, Any] = {"credsStore": "pass", "auths": {}}
    else:
        config = {"credHelpers": {e2e.registry.host: "pass"}, "auths": {"other:5000": OTHER_ENTRY}}
    before = write_config(e2e, config)
    e2e.login()
    assert config_path(e2e).read_bytes() == before  # no `auth` written anywhere
    assert len(e2e.passwords.entries()) == 1
    ref = e2e.push_tiny(f"e2e/tiny:{configured.lower()}")
    e2e.docker("rmi", ref)
    e2e.docker("pull", ref)
    assert e2e.cli("logout", "--registry", e2e.registry.host).returncode == 0
    assert e2e.passwords.entries() == []
    assert config_path(e2e).read_bytes() == before


def test_logout_removes_only_our_entry(e2e: E2E) -> None:
    write_config(e2e, {"auths": {"other:5000": OTHER_ENTRY}, "currentContext": "x"})
    e2e.login("--verify", "none")
    done = e2e.cli("logout", "--registry", e2e.registry.host)
    assert done.stdout.strip() == f"Removing login credentials for {e2e.registry.host}"
    assert json.loads(config_path(e2e).read_text()) == {
        "auths": {"other:5000": OTHER_ENTRY},
        "currentContext": "x",
    }
    done = e2e.cli("logout", "--registry", e2e.registry.host)
    assert done.stdout.strip() == f"Not logged in to {e2e.registry.host}"


# --- the registry checks for real --------------------------------------------------------


VALIDITY = 5  # seconds: long enough to log in and push, short enough to wait for


def test_expired_token_is_refused_by_the_registry(e2e: E2E) -> None:
    e2e.snowflake.set_validity(token=VALIDITY)
    started = time.monotonic()
    e2e.login("--verify", "registry")
    ref = e2e.push_tiny("e2e/tiny:expiring")  # accepted while the token is valid
    e2e.docker("rmi", ref)
    assert time.monotonic() - started < VALIDITY, "too slow to prove anything: raise VALIDITY"
    refused = e2e.registry.realm.refused
    password = stored_password(e2e, e2e.registry.host)
    while e2e.snowflake.registry_password_is_valid(password):  # until Snowflake says expired
        assert time.monotonic() - started < 3 * VALIDITY
        time.sleep(0.1)
    pulled = e2e.docker("pull", ref, check=False)
    assert pulled.returncode != 0
    assert "unauthorized" in pulled.stderr.lower() or "denied" in pulled.stderr.lower()
    listed = e2e.run("skopeo", "list-tags", "--authfile", str(config_path(e2e)),
                     "--tls-verify=false", f"docker://{e2e.registry.host}/e2e/tiny")  # fmt: skip
    assert listed.returncode != 0
    assert e2e.registry.realm.refused > refused


@pytest.mark.parametrize("verify", ["engine", "registry"])
def test_refused_credentials_fail_login_and_replace_nothing(e2e: E2E, verify: str) -> None:
    e2e.login("--verify", "none")
    working = config_path(e2e).read_bytes()
    e2e.snowflake.set_validity(token=0)  # issued already expired
    done = e2e.cli("login", "--registry", e2e.registry.host, "--verify", verify)
    assert one_line_error(done) == f"Error: registry {e2e.registry.host} refused the credentials"
    assert config_path(e2e).read_bytes() == working


# --- failures: one line, the right exit code, nothing lost --------------------------------


def test_corrupt_config_is_left_untouched(e2e: E2E) -> None:
    e2e.docker_config.mkdir()
    config_path(e2e).write_bytes(b'{"auths": {"other:5000": {"auth": "eDp5"}}')
    done = e2e.cli("login", "--registry", e2e.registry.host, "--verify", "none")
    line = one_line_error(done)
    assert "is not valid JSON" in line
    assert "left it untouched" in line
    assert config_path(e2e).read_bytes() == b'{"auths": {"other:5000": {"auth": "eDp5"}}'


def test_read_only_config_dir_fails_cleanly(e2e: E2E) -> None:
    before = write_config(e2e, {"auths": {"other:5000": OTHER_ENTRY}})
    with read_only(e2e.docker_config):
        done = e2e.cli("login", "--registry", e2e.registry.host, "--verify", "none")
    assert str(e2e.docker_config) in one_line_error(done)
    assert config_path(e2e).read_bytes() == before


def test_missing_helper_binary_fails_cleanly(e2e: E2E) -> None:
    before = write_config(e2e, {"credsStore": "no-such-helper"})
    done = e2e.cli("login", "--registry", e2e.registry.host, "--verify", "none")
    assert one_line_error(done) == (
        f"Error: cannot store credentials for {e2e.registry.host}: "
        "docker-credential-no-such-helper not found in PATH"
    )
    assert config_path(e2e).read_bytes() == before


def test_engine_not_running(e2e: E2E, tmp_path: Path) -> None:
    """auto: a warning and the registry's own check; engine: a one-line failure."""
    no_engine = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    done = e2e.cli("login", "--registry", e2e.registry.host, "-v", env=no_engine)
    assert done.returncode == 0, done.stderr
    assert "docker_engine_unreachable" in done.stderr
    assert '"verified": "registry"' in done.stderr
    assert e2e.snowflake.registry_password_is_valid(stored_password(e2e, e2e.registry.host))
    working = config_path(e2e).read_bytes()
    done = e2e.cli("login", "--registry", e2e.registry.host, "--verify", "engine", env=no_engine)
    assert one_line_error(done).startswith("Error: docker engine not reachable: ")
    assert config_path(e2e).read_bytes() == working


# --- racing docker login -----------------------------------------------------------------


@pytest.fixture(scope="module")
def alias_registry(e2e_root: Path, registry: Registry) -> Iterator[Registry]:
    """The same registry setup on 127.0.0.2, same port: another host name for docker."""
    with running_registry(
        e2e_root / "registry-alias", registry.realm, address="127.0.0.2", port=registry.port
    ) as alias:
        yield alias


def test_logins_racing_docker_logins_lose_nothing(e2e: E2E, alias_registry: Registry) -> None:
    """200 of ours (20 real CLI runs, 180 in-process stores) against 200 `docker login`s.

    `docker login` takes no lock and rewrites the whole file; ours must neither lose its
    entries nor be lost, the file must always parse, and it must stay 0600. The docker
    side logs in to two other names of the same registry, one after the other per name.
    """
    ours = e2e.registry.host
    theirs = [f"localhost:{e2e.registry.port}", alias_registry.host]
    password = token_password(e2e)
    e2e.login("--verify", "none")

    def docker_logins(host: str, count: int) -> list[int]:
        return [
            e2e.run("docker", "login", "-u", USERNAME, "--password-stdin", host,
                    env={}, input_=password).returncode
            for _ in range(count)
        ]  # fmt: skip

    assert docker_logins(theirs[0], 1) == [0]  # their entries exist before the race, like ours
    assert docker_logins(theirs[1], 1) == [0]
    with watching(config_path(e2e)) as problems, ThreadPoolExecutor(6) as pool:
        docker_runs = [pool.submit(docker_logins, host, 99) for host in theirs]
        cli_runs = [
            pool.submit(e2e.cli, "login", "--registry", ours, "--verify", "none") for _ in range(20)
        ]
        stores = [
            pool.submit(store_credentials, ours, password, e2e.docker_config) for _ in range(180)
        ]
        assert [f.result() for f in stores] == ["auths"] * 180
        assert [f.result().returncode for f in cli_runs] == [0] * 20
        assert [code for f in docker_runs for code in f.result()] == [0] * 198
    assert problems == []
    auths = json.loads(config_path(e2e).read_text())["auths"]
    assert sorted(auths) == sorted([ours, *theirs])
    for host in auths:
        assert e2e.snowflake.registry_password_is_valid(stored_password(e2e, host))
    assert stat.S_IMODE(config_path(e2e).stat().st_mode) == 0o600


def test_logout_revoke_logs_the_token_session_out(e2e: E2E) -> None:
    e2e.login("--verify", "none")
    password = stored_password(e2e, e2e.registry.host)
    done = e2e.cli("logout", "--registry", e2e.registry.host, "--revoke")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"Removing login credentials for {e2e.registry.host}; Snowflake session logged out"
    )
    assert json.loads(config_path(e2e).read_text())["auths"] == {}
    assert not e2e.snowflake.registry_password_is_valid(password)
    relogin = e2e.run("docker", "login", "-u", USERNAME, "--password-stdin", e2e.registry.host,
                      input_=password)  # fmt: skip
    assert relogin.returncode != 0  # the registry itself refuses the revoked token
