"""docker_credentials against the real filesystem and real helper executables."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.config_watch import watching
from support.fake_helper import install_fake_helper
from support.readonly import read_only

from spcs_registry_agent import docker_credentials as dc
from spcs_registry_agent.docker_credentials import (
    USERNAME,
    CredentialsError,
    docker_config_dir,
    erase_credentials,
    read_credentials,
    sink_for,
    store_credentials,
)

HOST = "org-acct.registry.snowflakecomputing.com"
SECRET = json.dumps({"token": "ver:1-hint:2-SECRETTOKENVALUE", "expires_in": 3600})

RICH_CONFIG: dict[str, Any] = {
    "auths": {
        "other.example:5000": {"auth": base64.b64encode(b"me:pw").decode()},
        "https://index.docker.io/v1/": {},
    },
    "credHelpers": {"gcr.io": "gcloud"},
    "HttpHeaders": {"User-Agent": "Docker-Client/x"},
    "proxies": {"default": {"httpProxy": "http://127.0.0.1:3128"}},
    "currentContext": "ctx",
    "someFutureKey": [1, 2.5, None, True, "é ✓", {"deep": {"er": 12345678901234567890}}],
}


def decoded(entry: dict[str, Any]) -> str:
    return base64.b64decode(entry["auth"]).decode()


def config_of(config_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((config_dir / "config.json").read_text())
    return loaded


def write_config(config_dir: Path, config: object, mode: int = 0o600) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(mode)
    return path


@pytest.fixture
def helper_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH entry that holds the fake `docker-credential-fake` helper."""
    bin_dir = tmp_path / "bin"
    install_fake_helper(bin_dir, "fake")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def helper_db(helper_bin: Path) -> dict[str, Any]:
    db: dict[str, Any] = json.loads((helper_bin / "fake.json").read_text())
    return db


# --- where -------------------------------------------------------------------------------


def test_config_dir_prefers_flag_then_env_then_home(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": "/from/env"}
    assert docker_config_dir(tmp_path / "flag", env, tmp_path) == tmp_path / "flag"
    assert docker_config_dir(None, env, tmp_path) == Path("/from/env")
    assert docker_config_dir(None, {"DOCKER_CONFIG": ""}, tmp_path) == tmp_path / ".docker"
    assert docker_config_dir(None, {}, tmp_path) == tmp_path / ".docker"


@pytest.mark.parametrize(
    ("config", "sink"),
    [
        ({}, "auths"),
        ({"auths": {HOST: {}}}, "auths"),
        ({"credsStore": "pass"}, "credsStore:pass"),
        ({"credsStore": "pass", "credHelpers": {HOST: "ecr-login"}}, "credHelpers:ecr-login"),
        ({"credsStore": "pass", "credHelpers": {"other": "ecr-login"}}, "credsStore:pass"),
        # docker/cli: an empty credHelpers entry means "the file", even with a credsStore.
        ({"credsStore": "pass", "credHelpers": {HOST: ""}}, "auths"),
        ({"credsStore": ""}, "auths"),
    ],
)
def test_sink_follows_docker_cli_order(config: dict[str, Any], sink: str) -> None:
    assert sink_for(HOST, config) == sink


@pytest.mark.parametrize("name", ["../../bin/sh", "a b", 7])
def test_sink_rejects_helper_names_that_are_not_names(name: object) -> None:
    with pytest.raises(CredentialsError, match="invalid credential helper name"):
        sink_for(HOST, {"credsStore": name})


# --- auths in config.json ----------------------------------------------------------------


def test_store_creates_dir_0700_and_file_0600(tmp_path: Path) -> None:
    config_dir = tmp_path / "new" / ".docker"
    assert store_credentials(HOST, SECRET, config_dir) == "auths"
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((config_dir / "config.json").stat().st_mode) == 0o600
    assert decoded(config_of(config_dir)["auths"][HOST]) == f"{USERNAME}:{SECRET}"
    assert sorted(p.name for p in config_dir.iterdir()) == [".config.json.lock", "config.json"]


def test_store_keeps_every_other_key_and_the_file_mode(tmp_path: Path) -> None:
    path = write_config(tmp_path, RICH_CONFIG, mode=0o640)
    store_credentials(HOST, SECRET, tmp_path)
    after = config_of(tmp_path)
    assert decoded(after["auths"].pop(HOST)) == f"{USERNAME}:{SECRET}"
    assert after == RICH_CONFIG
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_store_replaces_the_whole_entry(tmp_path: Path) -> None:
    """A stale identitytoken would make docker ignore our password."""
    write_config(tmp_path, {"auths": {HOST: {"auth": "eDp5", "identitytoken": "old"}}})
    store_credentials(HOST, SECRET, tmp_path)
    assert config_of(tmp_path)["auths"][HOST] == {"auth": dc.auth_field(SECRET)}


@pytest.mark.parametrize("content", ["", "  \n", '{"auths": null}'])
def test_store_accepts_what_docker_accepts_as_empty(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    store_credentials(HOST, SECRET, tmp_path)
    assert list(config_of(tmp_path)["auths"]) == [HOST]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"auths": {', r"is not valid JSON \(line 1\)"),
        (b"\xff\xfe\x00garbage", "is not valid JSON"),
        (b"[1, 2]", "does not hold a JSON object"),
        (b'{"auths": []}', "'auths' has the wrong type"),
        (b'{"credsStore": {}}', "'credsStore' has the wrong type"),
    ],
)
def test_unparsable_config_is_never_overwritten(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    before = path.stat()
    with pytest.raises(CredentialsError, match=message) as err:
        store_credentials(HOST, SECRET, tmp_path)
    assert "\n" not in str(err.value)
    assert "left it untouched" in str(err.value)
    assert path.read_bytes() == content
    assert path.stat().st_ino == before.st_ino
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_read_only_dir_is_a_one_line_error_and_nothing_changes(tmp_path: Path) -> None:
    config_dir = tmp_path / "ro"
    path = write_config(config_dir, RICH_CONFIG)
    before = path.read_bytes()
    with read_only(config_dir), pytest.raises(CredentialsError) as err:
        store_credentials(HOST, SECRET, config_dir)
    assert str(config_dir) in str(err.value)
    assert "\n" not in str(err.value)
    assert SECRET not in str(err.value)
    assert path.read_bytes() == before


def test_store_writes_through_a_symlinked_config(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    real = write_config(dotfiles, RICH_CONFIG)
    config_dir = tmp_path / ".docker"
    config_dir.mkdir()
    (config_dir / "config.json").symlink_to(real)
    store_credentials(HOST, SECRET, config_dir)
    assert (config_dir / "config.json").is_symlink()
    assert HOST in json.loads(real.read_text())["auths"]


def test_erase_removes_only_our_entry(tmp_path: Path) -> None:
    write_config(tmp_path, RICH_CONFIG)
    store_credentials(HOST, SECRET, tmp_path)
    assert erase_credentials(HOST, tmp_path) is True
    assert config_of(tmp_path) == RICH_CONFIG
    assert erase_credentials(HOST, tmp_path) is False


def test_erase_leaves_someone_elses_credentials(tmp_path: Path) -> None:
    """Only `0sessiontoken` entries are ours; a user's own login for the host stays."""
    path = write_config(tmp_path, {"auths": {HOST: {"auth": base64.b64encode(b"u:p").decode()}}})
    before = path.read_bytes()
    assert erase_credentials(HOST, tmp_path) is False
    assert erase_credentials("absent.example", tmp_path) is False
    assert path.read_bytes() == before


def test_erase_without_config_is_false(tmp_path: Path) -> None:
    assert erase_credentials(HOST, tmp_path / "missing") is False
    assert not (tmp_path / "missing").exists()


def test_rewrite_reapplies_a_change_when_the_file_moves_underneath(tmp_path: Path) -> None:
    """What a `docker login` (no lock) writing during our write looks like: not lost."""
    write_config(tmp_path, {"auths": {}})
    calls = []

    def change(config: dict[str, Any]) -> bool:
        calls.append(dict(config["auths"]))
        if len(calls) == 1:  # an unlocked writer replaces the file meanwhile
            write_config(tmp_path, {"auths": {"theirs:1": {"auth": "dTpw"}}})
        config["auths"]["ours:1"] = {"auth": "eDp5"}
        return True

    with dc._locked(tmp_path):
        assert dc._rewrite(tmp_path / "config.json", change) is True
    assert len(calls) == 2
    assert sorted(config_of(tmp_path)["auths"]) == ["ours:1", "theirs:1"]


# --- concurrency -------------------------------------------------------------------------


def _store_in_process(config_dir: str, hosts: list[str]) -> None:
    for host in hosts:
        store_credentials(host, SECRET, Path(config_dir))


def _docker_like_writes(config_dir: Path, hosts: list[str]) -> None:
    """`docker login`s one after the other, in their own process like the real ones:
    load config, ask the engine (a millisecond here), Save() by temp file + rename, no lock."""
    path = config_dir / "config.json"
    for host in hosts:
        config = json.loads(path.read_text())
        time.sleep(0.001)
        config.setdefault("auths", {})[host] = {"auth": base64.b64encode(b"u:p").decode()}
        temp = config_dir / "config.json.docker"
        temp.write_text(json.dumps(config, indent="\t"))
        temp.chmod(0o600)
        os.replace(temp, path)
        time.sleep(0.001)


def test_threads_and_processes_lose_no_entry(tmp_path: Path) -> None:
    path = write_config(tmp_path, RICH_CONFIG)
    thread_hosts = [f"thread{i}.example" for i in range(40)]
    process_hosts = [[f"proc{p}-{i}.example" for i in range(20)] for p in range(3)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_store_in_process, args=(str(tmp_path), h)) for h in process_hosts]
    with watching(path) as problems:
        for proc in procs:
            proc.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda h: store_credentials(h, SECRET, tmp_path), thread_hosts))
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
    auths = config_of(tmp_path)["auths"]
    expected = {*thread_hosts, *(h for hosts in process_hosts for h in hosts)}
    assert expected <= set(auths)
    assert {k: v for k, v in config_of(tmp_path).items() if k != "auths"} == {
        k: v for k, v in RICH_CONFIG.items() if k != "auths"
    }
    assert problems == []


def test_racing_an_unlocked_docker_like_writer(tmp_path: Path) -> None:
    """Their entries survive our writes; ours survive theirs once it existed before.

    One docker-like writer at a time: concurrent `docker login`s lose each other's
    entries by themselves (docker/cli takes no lock), which is not ours to fix.
    A writer with no pause at all can starve us (we give up after REWRITE_ATTEMPTS
    rather than spin); real `docker login`s are milliseconds apart.
    """
    path = write_config(tmp_path, {"auths": {}})
    store_credentials(HOST, SECRET, tmp_path)
    theirs = [f"docker{i}.example" for i in range(100)]
    with watching(path) as problems, ThreadPoolExecutor(6) as pool:
        mine = [pool.submit(store_credentials, HOST, SECRET, tmp_path) for _ in range(100)]
        docker = multiprocessing.get_context("fork").Process(
            target=_docker_like_writes, args=(tmp_path, theirs)
        )
        docker.start()
        docker.join(60)
        assert docker.exitcode == 0
        assert {f.result() for f in mine} == {"auths"}
    auths = config_of(tmp_path)["auths"]
    assert set(auths) == {HOST, *theirs}
    assert decoded(auths[HOST]) == f"{USERNAME}:{SECRET}"
    assert problems == []


# --- credential helpers ------------------------------------------------------------------


def test_credsstore_gets_the_secret_and_config_stays_as_is(
    tmp_path: Path, helper_bin: Path
) -> None:
    path = write_config(tmp_path / "cfg", {"credsStore": "fake", "auths": {}})
    before = path.read_bytes()
    assert store_credentials(HOST, SECRET, tmp_path / "cfg") == "credsStore:fake"
    assert helper_db(helper_bin)[HOST] == {
        "ServerURL": HOST,
        "Username": USERNAME,
        "Secret": SECRET,
    }
    assert path.read_bytes() == before
    assert erase_credentials(HOST, tmp_path / "cfg") is True
    assert helper_db(helper_bin) == {}
    assert erase_credentials(HOST, tmp_path / "cfg") is False


def test_credhelpers_applies_to_its_host_only(tmp_path: Path, helper_bin: Path) -> None:
    write_config(tmp_path, {"credHelpers": {HOST: "fake"}})
    assert store_credentials(HOST, SECRET, tmp_path) == "credHelpers:fake"
    assert store_credentials("other:1", SECRET, tmp_path) == "auths"
    assert list(helper_db(helper_bin)) == [HOST]
    assert list(config_of(tmp_path)["auths"]) == ["other:1"]


def test_helper_store_works_in_a_read_only_config_dir(tmp_path: Path, helper_bin: Path) -> None:
    config_dir = tmp_path / "ro"
    write_config(config_dir, {"credsStore": "fake"})
    with read_only(config_dir):
        assert store_credentials(HOST, SECRET, config_dir) == "credsStore:fake"
    assert HOST in helper_db(helper_bin)


def test_missing_helper_is_a_one_line_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"credsStore": "does-not-exist"})
    with pytest.raises(CredentialsError) as err:
        store_credentials(HOST, SECRET, tmp_path)
    assert str(err.value) == (
        f"cannot store credentials for {HOST}: docker-credential-does-not-exist not found in PATH"
    )
    assert json.loads(path.read_text()) == {"credsStore": "does-not-exist"}


def test_failing_helper_error_never_quotes_the_secret(
    tmp_path: Path, helper_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HELPER_FAIL", "1")  # the helper echoes its stdin, secret included
    write_config(tmp_path, {"credsStore": "fake"})
    with pytest.raises(CredentialsError) as err:
        store_credentials(HOST, SECRET, tmp_path)
    assert str(err.value).startswith(
        f"cannot store credentials for {HOST}: docker-credential-fake store failed (exit 1): "
    )
    assert "SECRETTOKENVALUE" not in str(err.value)
    assert "\n" not in str(err.value)


def test_hanging_helper_is_killed_with_its_children(
    tmp_path: Path, helper_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HELPER_SLEEP", "60")
    write_config(tmp_path, {"credsStore": "fake"})
    started = time.monotonic()
    with pytest.raises(CredentialsError, match="docker-credential-fake store timed out after 1s"):
        store_credentials(HOST, SECRET, tmp_path, helper_timeout=1.0)
    assert time.monotonic() - started < 5
    grandchild = int((helper_bin / "fake.json.grandchild").read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"


def test_module_does_not_import_the_docker_sdk() -> None:
    """`token` and `url` import this module's neighbours and must stay fast."""
    code = (
        "import sys, spcs_registry_agent.cli, spcs_registry_agent.docker_credentials,"
        " spcs_registry_agent.verify;"
        "sys.exit('docker' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_read_credentials_returns_only_ours(tmp_path: Path, helper_bin: Path) -> None:
    write_config(tmp_path, {"auths": {"theirs:1": {"auth": base64.b64encode(b"u:p").decode()}}})
    assert read_credentials(HOST, tmp_path) is None
    assert read_credentials("theirs:1", tmp_path) is None
    store_credentials(HOST, SECRET, tmp_path)
    assert read_credentials(HOST, tmp_path) == SECRET
    write_config(tmp_path, {"credsStore": "fake"})
    assert read_credentials(HOST, tmp_path) is None
    store_credentials(HOST, SECRET, tmp_path)
    assert read_credentials(HOST, tmp_path) == SECRET
