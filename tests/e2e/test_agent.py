"""The agent with real time and real parts: fake Snowflake, docker-registry, skopeo, sd_notify.

One agent process runs for about a minute with 10-second tokens while several faults happen
at once - on separate fakes so they do not hide each other: skopeo keeps succeeding on the
steady target, a second target goes through 20 s of HTTP 503, the steady target's master
token expires, SIGHUP swaps targets, and SIGTERM ends it. Shorter runs cover on_exit=revoke
and a wall-clock jump (injected clock, in-process).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector
from support.components import missing_binaries, running_registry
from support.fake_snowflake import DEFAULT_PASSWORD, FakeSnowflake
from support.processes import CLI
from support.token_realm import TokenRealm

from spcs_registry_agent.agent import Agent, LiveBackend
from spcs_registry_agent.config import AgentConfig, Target
from spcs_registry_agent.docker_credentials import read_config
from spcs_registry_agent.notify import Notifier
from spcs_registry_agent.policy import ClockSample, Policy

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(missing_binaries()), reason=f"missing: {missing_binaries()}"),
]

REPO = "e2e/agent"
CONNECTOR_MAJOR = int(snowflake.connector.__version__.split(".")[0])


@dataclass
class NotifyReceiver:
    """A datagram socket bound where NOTIFY_SOCKET points; keeps (monotonic time, message)."""

    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def fields(self, prefix: str) -> list[tuple[float, str]]:
        return [
            (at, line)
            for at, text in self.messages
            for line in text.split("\n")
            if line.startswith(prefix)
        ]

    def wait(self, prefix: str, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.fields(prefix)
            if found:
                return found[0][0]
            time.sleep(0.05)
        raise AssertionError(f"no {prefix} datagram in {timeout} s: {self.messages}")


@contextlib.contextmanager
def notify_receiver(path: Path) -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(path)
    try:
        yield receiver
    finally:
        receiver.close()


def connection_table(name: str, fake: FakeSnowflake, user: str, password: str) -> str:
    return (
        f'[connections.{name}]\nhost = "{fake.host}"\nport = {fake.port}\nprotocol = "http"\n'
        f'account = "{fake.account}"\nuser = "{user}"\npassword = "{password}"\n'
    )


def write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def agent_config(docker: Path, state: Path, registries: list[str], **agent: str) -> str:
    settings = {"docker_config": str(docker), "state_dir": str(state), "verify": "none", **agent}
    lines = ["[agent]", *(f'{k} = "{v}"' for k, v in settings.items())]
    return "\n".join(lines) + "\n\n" + "\n".join(registries)


def registry(connection: str, host: str) -> str:
    return f'[[registry]]\nconnection = "{connection}"\nhost = "{host}"\n'


def agent_env(root: Path, notify: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SNOWFLAKE_", "DOCKER_", "NOTIFY_", "WATCHDOG_"))
    }
    env.update(
        HOME=str(root / "home"),
        SNOWFLAKE_HOME=str(root / "snowflake"),
        SNOWFLAKE_DISABLE_PLATFORM_DETECTION="true",
        NOTIFY_SOCKET=str(notify),
        WATCHDOG_USEC="2000000",
    )
    return env


def start_agent(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*CLI, "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def events(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def oci_layout(directory: Path) -> Path:
    """A one-layer image as an OCI layout, for skopeo to push without an engine."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    layer = blob(
        gzip.compress(raw.getvalue(), mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    )
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    image = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config = blob(json.dumps(image).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "config": config, "layers": [layer]}
    descriptor = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    (directory / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [descriptor]})
    )
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return directory


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=30, check=False
    )


class Prober:
    """skopeo list-tags with the agent's config.json at random moments, from a thread."""

    def __init__(self, authfile: Path, host: str) -> None:
        self.authfile = authfile
        self.host = host
        self.results: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def probe(self) -> tuple[bool, str]:
        done = skopeo(
            "list-tags", "--authfile", str(self.authfile), "--tls-verify=false",
            f"docker://{self.host}/{REPO}",
        )  # fmt: skip
        return done.returncode == 0 and '"v1"' in done.stdout, done.stderr.strip()[-300:]

    def _run(self) -> None:
        while not self._stop.wait(random.uniform(0.1, 1.5)):
            ok, detail = self.probe()
            self.results.append((time.monotonic(), ok, detail))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_agent_keeps_docker_logged_in_through_faults_reload_and_stop(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        steady = stack.enter_context(FakeSnowflake(token_validity=10))
        flaky = stack.enter_context(FakeSnowflake(token_validity=10))
        third = stack.enter_context(FakeSnowflake(token_validity=10))
        realm = TokenRealm(steady)
        reg = stack.enter_context(running_registry(tmp_path / "registry", realm))
        notify = stack.enter_context(notify_receiver(tmp_path / "notify.sock"))
        docker, state = tmp_path / "docker", tmp_path / "state"
        docker.mkdir()
        write_private(
            tmp_path / "snowflake" / "config.toml",
            connection_table("steady", steady, "alice", DEFAULT_PASSWORD)
            + connection_table("flaky", flaky, "alice", DEFAULT_PASSWORD)
            + connection_table("third", third, "alice", DEFAULT_PASSWORD),
        )
        flaky_host, third_host = "flaky.registry.example:5000", "third.registry.example"
        config = write_private(
            tmp_path / "agent.toml",
            agent_config(
                docker, state, [registry("steady", reg.host), registry("flaky", flaky_host)]
            ),
        )
        log = tmp_path / "agent.log"
        env = agent_env(tmp_path, tmp_path / "notify.sock")
        agent = start_agent(config, env, log)
        stack.callback(agent.kill)  # a no-op once it has exited
        started = time.monotonic()

        ready_at = notify.wait("READY=1")
        authfile = docker / "config.json"
        pushed = skopeo(
            "copy", "--dest-authfile", str(authfile), "--dest-tls-verify=false",
            f"oci:{oci_layout(tmp_path / 'image')}:v1", f"docker://{reg.host}/{REPO}:v1",
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr

        with Prober(authfile, reg.host) as prober:
            # 20 s of HTTP 503 on the second target's Snowflake, from t=3 s.
            time.sleep(3)
            flaky_written = read_config(authfile)["auths"][flaky_host]
            flaky.fail_http(503, seconds=20)
            outage_over = iso_in(20)
            # The steady target's master token expires (390114 on its next token request).
            time.sleep(8)
            steady.expire_master_tokens()
            assert read_config(authfile)["auths"][flaky_host] == flaky_written, "kept in outage"
            time.sleep(10)
            status = subprocess.run(
                [*CLI, "status", "--config", str(config),
                 "--format", "JSON"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            wait_until(
                lambda: any(
                    e.get("event") == "token_refreshed"
                    and e.get("target") == "flaky"
                    and e["timestamp"] > outage_over
                    for e in events(log)
                ),
                "flaky target to recover",
                timeout=30,
            )
            # SIGHUP: drop "flaky", add "third"; "steady" keeps its session.
            write_private(
                config,
                agent_config(
                    docker, state, [registry("steady", reg.host), registry("third", third_host)]
                ),
            )
            agent.send_signal(signal.SIGHUP)
            wait_until(lambda: third.logins["alice"] == 1, "third target logged in")
            wait_until(lambda: time.monotonic() - started > 58, "a minute of running", 60)

        stop_sent = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        stop_took = time.monotonic() - stop_sent
        ran = stop_sent - ready_at
        logged = events(log)

    # skopeo succeeded at random moments throughout, with no gap.
    outcomes = prober.results
    assert len(outcomes) > 30
    failures = [(round(at - ready_at, 1), detail) for at, ok, detail in outcomes if not ok]
    assert failures == []
    # About one token request per 6-7 s for the steady connection, one login + one re-login.
    steady_issues = [r for r in steady.requests_to("token") if r.detail == "ISSUE"]
    assert ran / 7.5 <= len(steady_issues) <= ran / 5.5 + 3, (len(steady_issues), ran)
    assert steady.logins["alice"] == 2, "exactly one new login after 390114"
    assert flaky.logins["alice"] == 1, "an outage is not a reason to log in again"
    assert steady.logouts == flaky.logouts == third.logouts == 0, "on_exit=keep: no logout"
    # The outage: backed off (several spaced retries, not a tight loop), logged, recovered.
    retries = [
        e for e in logged if e.get("event") == "token_refresh_failed" and e["target"] == "flaky"
    ]
    if CONNECTOR_MAJOR >= 5:
        assert 3 <= len(retries) <= 12, len(retries)
        assert all(e["level"] == "warning" or e["held"] == "expired" for e in retries)
        assert "503" in retries[0]["reason"]
    else:  # 4.x retries a 503 inside the token request itself and rides out the outage
        assert retries == []
        assert any(
            e.get("event") == "token_refreshed"
            and e["target"] == "flaky"
            and e["duration_ms"] > 5000
            for e in logged
        )
    # `status` mid-run (during the outage's last second): both targets, steady healthy.
    assert status.returncode in (0, 1), status.stderr
    by_target = {row["target"]: row for row in json.loads(status.stdout)}
    assert by_target["steady"]["healthy"] is True
    assert by_target["flaky"]["registry"] == flaky_host
    # Reload: flaky dropped, third added, steady's session kept (no extra alice login).
    assert json.loads((state / "third.json").read_text())["registry"] == third_host
    assert not (state / "flaky.json").exists()
    # sd_notify: READY once at start and after the reload, STATUS, watchdog pings, STOPPING.
    assert len(notify.fields("READY=1")) == 2
    assert len(notify.fields("RELOADING=1")) == 1
    assert notify.fields("STATUS=")[-1][1].startswith("STATUS=2/2 ok")
    assert len(notify.fields("WATCHDOG=1")) >= ran / 1.5
    assert notify.fields("STOPPING=1")
    assert stop_took < 5
    # Every refresh is one INFO event with the fields operators grep for; no secret anywhere.
    refreshed = [e for e in logged if e.get("event") == "token_refreshed"]
    assert all({"connection", "registry", "expires_at", "duration_ms"} <= set(e) for e in refreshed)
    text = log.read_text()
    leaked = [s for fake in (steady, flaky, third) for s in fake.secrets() if s in text]
    assert leaked == []


def iso_in(seconds: float) -> str:
    """UTC time `seconds` from now in the logs' timestamp format (sortable as text)."""
    at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.connector  # quick; 4.x logs out and ISSUEs differently
def test_on_exit_revoke_leaves_no_entry_and_logs_out(tmp_path: Path) -> None:
    with FakeSnowflake(token_validity=10) as fake, notify_receiver(tmp_path / "n.sock") as notify:
        docker = tmp_path / "docker"
        docker.mkdir()
        (docker / "config.json").write_text('{"auths": {"other.example": {"auth": "eDp5"}}}')
        write_private(
            tmp_path / "snowflake" / "config.toml",
            connection_table("prod", fake, "alice", DEFAULT_PASSWORD),
        )
        host = "prod.registry.example"
        config = write_private(
            tmp_path / "agent.toml",
            agent_config(docker, tmp_path / "state", [registry("prod", host)], on_exit="revoke"),
        )
        log = tmp_path / "agent.log"
        agent = start_agent(config, agent_env(tmp_path, tmp_path / "n.sock"), log)
        try:
            notify.wait("READY=1")
            assert host in read_config(docker / "config.json")["auths"]
            sent = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0
            assert time.monotonic() - sent < 5
        finally:
            if agent.poll() is None:
                agent.kill()
        assert read_config(docker / "config.json")["auths"] == {"other.example": {"auth": "eDp5"}}
        assert fake.logouts == 1
        assert not fake.registry_password_is_valid(
            json.dumps({"token": fake.issued_tokens()[-1], "expires_in": 10})
        )
        assert list((tmp_path / "state").glob("*.json")) == []


class JumpingClock:
    """Real time plus an offset the test can step, as an NTP step or a resume would."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def sample(self) -> ClockSample:
        return ClockSample(self.time(), self.monotonic())


@pytest.mark.connector  # quick; 4.x logs out and ISSUEs differently
def test_wall_clock_jump_refreshes_within_one_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeSnowflake(token_validity=3600) as fake:
        write_private(
            tmp_path / "snowflake" / "config.toml",
            connection_table("prod", fake, "alice", DEFAULT_PASSWORD),
        )
        monkeypatch.setenv("SNOWFLAKE_HOME", str(tmp_path / "snowflake"))
        docker = tmp_path / "docker"
        config = AgentConfig(
            docker_config=docker,
            verify="none",
            state_dir=tmp_path / "state",
            heartbeat=1.0,
            policy=Policy(),
            targets=(Target("prod", "prod", host="prod.registry.example"),),
        )
        env = dict(os.environ)
        clock = JumpingClock()
        agent = Agent(
            config, LiveBackend(env, tmp_path), env=env, home=tmp_path, clock=clock,
            notifier=Notifier({}),
        )  # fmt: skip
        agent.start()
        try:

            def auths() -> dict[str, Any]:
                found: dict[str, Any] = read_config(docker / "config.json").get("auths", {})
                return found

            wait_until(lambda: "prod.registry.example" in auths(), "first credentials")
            first = auths()["prod.registry.example"]
            time.sleep(1.5)  # a couple of quiet heartbeats: no jump, no refresh
            assert len(fake.issued_tokens()) == 1
            jumped = time.monotonic()
            clock.offset += 2 * 3600  # the token expired while the clock was "away"
            wait_until(lambda: len(fake.issued_tokens()) == 2, "refresh after the jump", 5)
            assert time.monotonic() - jumped < 1.0 + 1.0  # one heartbeat plus the request
            wait_until(lambda: auths()["prod.registry.example"] != first, "new credentials", 5)
            assert fake.logins["alice"] == 1
        finally:
            agent.stop()
