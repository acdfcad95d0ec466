"""The agent's scheduling with a fake backend: freezegun moves time, then the scheduler wakes.

Jobs run on APScheduler's worker threads, so tests wait (briefly, in real time) for their
effects. The agent's clock reads the frozen time; its monotonic clock is moved by hand, so a
suspend (wall time passes, monotonic does not) can be simulated.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from structlog.testing import capture_logs

from spcs_registry_agent.agent import Agent, run_until_signalled
from spcs_registry_agent.config import AgentConfig, Target
from spcs_registry_agent.connections import ResolvedConnection
from spcs_registry_agent.errors import ConfigError
from spcs_registry_agent.notify import Notifier
from spcs_registry_agent.policy import ClockSample, Policy
from spcs_registry_agent.sessions import SessionLike
from spcs_registry_agent.snowflake import RegistryToken, SessionGoneError, SnowflakeError
from spcs_registry_agent.state import read_states

START = "2027-01-15 08:00:00"
HOST = "myorg-acct.registry.snowflakecomputing.com"


class FrozenClock:
    """Wall time from freezegun; monotonic time only moves when the machine is awake."""

    def __init__(self, freezer: FrozenDateTimeFactory) -> None:
        self.freezer = freezer
        self.mono = 1000.0
        self.lock = threading.Lock()  # the heartbeat must never see half an advance

    def time(self) -> float:
        return self.freezer.time_to_freeze.replace(tzinfo=timezone.utc).timestamp()

    def monotonic(self) -> float:
        return self.mono

    def sample(self) -> ClockSample:
        with self.lock:
            return ClockSample(self.time(), self.mono)

    def advance(self, seconds: float, *, suspended: bool = False) -> None:
        with self.lock:
            self.freezer.tick(seconds)
            if not suspended:
                self.mono += seconds


class FakeSession:
    def __init__(self, backend: FakeBackend, name: str) -> None:
        self.backend = backend
        self.name = name

    def issue_token(self) -> RegistryToken:
        backend = self.backend
        with backend.lock:
            backend.issued[self.name] += 1
            if backend.gone.get(self.name):
                backend.gone[self.name] = False
                raise SessionGoneError(f"{self.name}: token request failed (390114)")
            if self.name in backend.failing:
                raise SnowflakeError(f"{self.name}: token request failed: HTTP 503")
            serial = sum(backend.issued.values())
        return RegistryToken(f"secret-token-{serial}", backend.validity, issued_at=0.0)

    def registry_host(self, *, private_link: bool = False) -> str:
        return ("pl." if private_link else "") + HOST

    def close(self, *, revoke: bool = False) -> None:
        with self.backend.lock:
            self.backend.closed.append((self.name, revoke))


class FakeBackend:
    def __init__(self, validity: int = 3600) -> None:
        self.validity = validity
        self.lock = threading.Lock()
        self.logins: Counter[str] = Counter()
        self.issued: Counter[str] = Counter()
        self.stored: dict[str, str] = {}
        self.store_calls = 0
        self.closed: list[tuple[str, bool]] = []
        self.erased: list[str] = []
        self.failing: set[str] = set()
        self.login_failing: set[str] = set()
        self.gone: dict[str, bool] = {}
        self.unknown: set[str] = set()
        self.while_storing: Callable[[], None] | None = None

    def resolve(self, targets: Sequence[Target]) -> dict[str, ResolvedConnection]:
        for target in targets:
            if target.name in self.unknown:
                raise ConfigError(f"target {target.name}: connection not found")
        return {
            t.name: ResolvedConnection(
                t.connection or t.name, {"account": "acct", "user": t.connection or t.name}
            )
            for t in targets
        }

    def login(self, connection: ResolvedConnection) -> SessionLike:
        assert connection.name is not None
        with self.lock:
            if connection.name in self.login_failing:
                raise SnowflakeError(f"{connection.name}: login failed: Incorrect password")
            self.logins[connection.name] += 1
        return FakeSession(self, connection.name)

    def store(self, host: str, secret: str, config: AgentConfig) -> str:
        if self.while_storing is not None:
            self.while_storing()
        with self.lock:
            self.stored[host] = secret
            self.store_calls += 1
        return "auths"

    def verify(self, host: str, secret: str, config: AgentConfig) -> None:
        pass

    def erase(self, host: str, config: AgentConfig) -> bool:
        with self.lock:
            self.erased.append(host)
            return self.stored.pop(host, None) is not None


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> bool:
        self.sent.append(fields)
        return True

    def states(self, prefix: str) -> list[str]:
        return [f for message in self.sent for f in message if f.startswith(prefix)]


def wait_for(condition: Callable[[], bool], what: str = "condition") -> None:
    for _ in range(500):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def settle() -> None:
    """Give the worker threads a chance to do something they should not do."""
    time.sleep(0.15)


class Harness:
    def __init__(self, agent: Agent, backend: FakeBackend, clock: FrozenClock) -> None:
        self.agent = agent
        self.backend = backend
        self.clock = clock
        self.notifier = agent.notifier
        assert isinstance(self.notifier, RecordingNotifier)
        self.recorded = self.notifier

    def advance(self, seconds: float, *, suspended: bool = False) -> None:
        self.clock.advance(seconds, suspended=suspended)
        self.agent.wakeup()

    def issued(self, name: str) -> int:
        with self.backend.lock:
            return self.backend.issued[name]

    def wait_issued(self, name: str, count: int) -> None:
        wait_for(lambda: self.issued(name) >= count, f"{name} issued {count}")
        wait_for(lambda: not self.agent.busy(), "refresh finished")

    def target(self, name: str) -> dict[str, Any]:
        return self.agent.snapshot()[name]


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    agents: list[Agent] = []
    with freeze_time(START) as freezer:

        def make(
            names: Sequence[str] = ("prod",),
            backend: FakeBackend | None = None,
            env: dict[str, str] | None = None,
            **settings: Any,
        ) -> Harness:
            backend = backend or FakeBackend()
            config = AgentConfig(
                state_dir=tmp_path / "state",
                policy=Policy(jitter=0.0),
                targets=tuple(Target(name=n, connection=n) for n in names),
            )
            config = replace(config, **settings)
            assert isinstance(freezer, FrozenDateTimeFactory)
            clock = FrozenClock(freezer)
            agent = Agent(
                config,
                backend,
                env=env or {},
                home=tmp_path,
                clock=clock,
                rand=lambda: 0.5,
                notifier=RecordingNotifier(),
            )
            agents.append(agent)
            agent.start()
            return Harness(agent, backend, clock)

        yield make
        for agent in agents:
            if agent.scheduler.running:
                agent.stop()


def test_targets_sharing_a_connection_share_one_login(
    make_agent: Callable[..., Harness],
) -> None:
    public = Target(name="public", connection="prod")
    private = Target(name="private", connection="prod", private_link=True)
    h = make_agent(targets=(public, private))
    h.wait_issued("prod", 2)
    assert h.backend.logins == Counter({"prod": 1})
    assert h.target("public")["logged_in"]
    h.agent.reload(replace(h.agent.config, targets=(public,)))
    assert h.backend.closed == [], "the session still serves the remaining target"
    assert h.target("public")["logged_in"]


def test_start_logs_in_every_target_once_and_writes(make_agent: Callable[..., Harness]) -> None:
    h = make_agent(["prod", "dev"])
    h.wait_issued("prod", 1)
    h.wait_issued("dev", 1)
    assert h.backend.logins == Counter({"prod": 1, "dev": 1})
    assert h.backend.stored[HOST].startswith('{"token": "secret-token-')
    wait_for(lambda: len(h.recorded.states("READY=1")) == 1, "READY")
    status = h.recorded.states("STATUS=")[-1]
    assert status.startswith("STATUS=2/2 ok; soonest expiry 2027-01-15T09:00:00+00:00")
    assert {s.name for s in read_states(h.agent.state_dir)} == {"prod", "dev"}


def test_refresh_at_two_thirds_on_the_kept_session(make_agent: Callable[..., Harness]) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    assert h.target("prod")["next_refresh"] == h.clock.time() + 2400
    h.advance(2399)
    settle()
    assert h.issued("prod") == 1
    h.advance(1)
    h.wait_issued("prod", 2)
    h.advance(2400)
    h.wait_issued("prod", 3)
    assert h.backend.logins == Counter({"prod": 1})
    assert h.backend.store_calls == 3


def test_late_refresh_still_runs_after_a_long_stall(make_agent: Callable[..., Harness]) -> None:
    # APScheduler's default misfire grace (1 s) would silently drop this run.
    h = make_agent()
    h.wait_issued("prod", 1)
    h.advance(3000)
    h.wait_issued("prod", 2)


def test_refresh_that_overruns_its_next_refresh_point_is_not_lost(
    make_agent: Callable[..., Harness],
) -> None:
    # A slow write (a credential helper taking longer than the refresh interval) plans the
    # next refresh in the past, so it starts while this run is still finishing.
    h = make_agent()
    h.wait_issued("prod", 1)

    def slow_once() -> None:
        h.backend.while_storing = None
        h.clock.advance(2500)

    h.backend.while_storing = slow_once
    h.advance(2400)
    h.wait_issued("prod", 3)  # the slow one, then the overdue one right after it
    settle()
    assert h.issued("prod") == 3
    h.advance(2400)
    h.wait_issued("prod", 4)


def test_failure_backs_off_and_keeps_written_credentials(
    make_agent: Callable[..., Harness],
) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    written = h.backend.stored[HOST]
    h.backend.failing.add("prod")
    with capture_logs() as logs:
        h.advance(2400)
        h.wait_issued("prod", 2)
        assert h.backend.stored[HOST] == written
        assert h.target("prod")["failures"] == 1
        assert h.target("prod")["next_refresh"] == pytest.approx(h.clock.time() + 0.75)
        h.advance(0.75)
        h.wait_issued("prod", 3)
        assert h.target("prod")["next_refresh"] == pytest.approx(h.clock.time() + 1.5)
        h.backend.failing.clear()
        h.advance(1.5)
        h.wait_issued("prod", 4)
    assert h.backend.stored[HOST] != written
    assert h.target("prod")["failures"] == 0
    failures = [e for e in logs if e["event"] == "token_refresh_failed"]
    assert len(failures) == 2
    assert failures[0]["log_level"] == "warning"
    assert "HTTP 503" in failures[0]["reason"]
    assert failures[0]["held"] == "valid until 2027-01-15T09:00:00+00:00"
    assert "STATUS=0/1 ok; failing: prod" in " ".join(h.recorded.states("STATUS="))


def test_retries_never_wait_past_expiry(make_agent: Callable[..., Harness]) -> None:
    h = make_agent(policy=Policy(jitter=0.0, backoff_initial=1000, backoff_max=1000))
    h.wait_issued("prod", 1)
    h.backend.failing.add("prod")
    h.advance(2400)
    h.wait_issued("prod", 2)
    assert h.target("prod")["next_refresh"] == h.clock.time() + 750
    h.advance(750)
    h.wait_issued("prod", 3)
    # The next try would be 750 s later, but the credentials expire in 450 s.
    assert h.target("prod")["next_refresh"] == h.target("prod")["expires_at"]


def test_failure_with_expired_credentials_is_an_error(make_agent: Callable[..., Harness]) -> None:
    backend = FakeBackend()
    backend.login_failing.add("prod")
    with capture_logs() as logs:
        h = make_agent(backend=backend)
        wait_for(lambda: h.target("prod")["failures"] == 1, "first failure")
    (failure,) = [e for e in logs if e["event"] == "token_refresh_failed"]
    assert failure["log_level"] == "error"
    assert failure["held"] == "expired"
    assert "Incorrect password" in failure["reason"]
    assert h.recorded.states("READY=1") == []  # nothing written yet: not ready


def test_ready_waits_for_every_target_to_be_tried(make_agent: Callable[..., Harness]) -> None:
    backend = FakeBackend()
    backend.login_failing.add("dev")
    h = make_agent(["prod", "dev"], backend=backend)
    wait_for(lambda: len(h.recorded.states("READY=1")) == 1, "READY")
    wait_for(lambda: h.target("dev")["failures"] == 1, "dev failed")
    assert h.target("prod")["written_to"] == "auths"
    assert h.recorded.states("STATUS=")[0] == (
        "STATUS=1/2 ok; failing: dev; soonest expiry 2027-01-15T09:00:00+00:00"
    )


def test_session_gone_means_exactly_one_new_login(make_agent: Callable[..., Harness]) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    h.backend.gone["prod"] = True
    h.advance(2400)
    h.wait_issued("prod", 3)  # the refused request and the one on the new session
    assert h.backend.logins == Counter({"prod": 2})
    assert h.backend.closed == [("prod", False)]  # the dead session is not logged out
    assert h.target("prod")["failures"] == 0


def test_zero_validity_token_is_a_failure(make_agent: Callable[..., Harness]) -> None:
    h = make_agent(backend=FakeBackend(validity=0))
    wait_for(lambda: h.target("prod")["failures"] == 1, "failure")
    wait_for(lambda: not h.agent.busy(), "the failure logged")
    assert HOST not in h.backend.stored
    assert "already expired" in h.target("prod")["last_error"]


def test_suspend_refreshes_every_target_at_the_next_heartbeat(
    make_agent: Callable[..., Harness],
) -> None:
    h = make_agent(["prod", "dev"], heartbeat=30.0)
    h.wait_issued("prod", 1)
    h.wait_issued("dev", 1)
    # 1000 s awake: heartbeats run, no jump, nothing due.
    for _ in range(34):
        h.advance(30)
    settle()
    assert (h.issued("prod"), h.issued("dev")) == (1, 1)
    # A 600 s suspend: wall time moves, monotonic does not. Refreshes are not due until
    # 2400 s, but the schedule cannot be trusted across the jump.
    with capture_logs() as logs:
        h.advance(600, suspended=True)
        h.wait_issued("prod", 2)
        h.wait_issued("dev", 2)
    (jump,) = [e for e in logs if e["event"] == "clock_jump_detected"]
    assert jump["skew_s"] == pytest.approx(600, abs=31)


def test_watchdog_pings_from_the_heartbeat(make_agent: Callable[..., Harness]) -> None:
    h = make_agent(env={"WATCHDOG_USEC": "20000000"})
    assert h.agent.heartbeat_interval == 10.0  # half of WatchdogSec, below the 30 s default
    h.wait_issued("prod", 1)
    pings = len(h.recorded.states("WATCHDOG=1"))
    h.advance(10)
    wait_for(lambda: len(h.recorded.states("WATCHDOG=1")) > pings, "watchdog ping")


def test_no_watchdog_without_watchdog_usec(make_agent: Callable[..., Harness]) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    h.advance(30)
    settle()
    assert h.recorded.states("WATCHDOG=1") == []


def test_backward_clock_step_refreshes_at_once(make_agent: Callable[..., Harness]) -> None:
    # APScheduler's triggers are wall-clock: after this step the 08:40 refresh (and any
    # wall-clock heartbeat) would wait an extra hour. The monotonic heartbeat does not.
    h = make_agent(heartbeat=10.0)
    h.wait_issued("prod", 1)
    with h.clock.lock:
        h.clock.mono += 10  # ten seconds pass, but the wall clock is stepped back an hour
    h.advance(10 - 3600, suspended=True)
    h.wait_issued("prod", 2)
    assert h.target("prod")["next_refresh"] == h.clock.time() + 2400


def test_reload_adds_drops_and_keeps(make_agent: Callable[..., Harness]) -> None:
    h = make_agent(["prod", "dev"])
    h.wait_issued("prod", 1)
    h.wait_issued("dev", 1)
    new = replace(h.agent.config, targets=(Target("prod", "prod"), Target("ci", "ci")))
    assert h.agent.reload(new)
    h.wait_issued("ci", 1)
    assert set(h.agent.snapshot()) == {"prod", "ci"}
    assert h.backend.logins == Counter({"prod": 1, "dev": 1, "ci": 1})
    assert h.backend.closed == [("dev", False)]
    assert {s.name for s in read_states(h.agent.state_dir)} == {"prod", "ci"}
    sent = [m[0] for m in h.recorded.sent]
    assert sent.index("RELOADING=1") < len(sent) - 1 - sent[::-1].index("READY=1")


def test_reload_of_a_changed_target_logs_in_again(make_agent: Callable[..., Harness]) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    assert h.agent.reload(replace(h.agent.config, targets=(Target("prod", "prod", host="h:5000"),)))
    wait_for(lambda: h.backend.logins["prod"] == 2, "second login")
    wait_for(lambda: "h:5000" in h.backend.stored, "write to the new host")


def test_bad_reload_keeps_the_running_config(make_agent: Callable[..., Harness]) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    h.backend.unknown.add("typo")
    old = h.agent.config
    with capture_logs() as logs:
        assert not h.agent.reload(replace(old, targets=(Target("typo", "typo"),)))
    assert h.agent.config is old
    assert set(h.agent.snapshot()) == {"prod"}
    assert [e["reason"] for e in logs if e["event"] == "reload_rejected"] == [
        "target typo: connection not found"
    ]
    assert h.recorded.sent[-1][0] == "READY=1"


def test_stop_keep_leaves_credentials_and_sessions(make_agent: Callable[..., Harness]) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    h.agent.stop()
    assert HOST in h.backend.stored
    assert h.backend.closed == [("prod", False)]  # closed, not logged out
    assert h.recorded.states("STOPPING=1") == ["STOPPING=1"]
    assert [s.name for s in read_states(h.agent.state_dir)] == ["prod"]


def test_stop_revoke_erases_and_logs_out(make_agent: Callable[..., Harness]) -> None:
    h = make_agent(["prod", "dev"], on_exit="revoke")
    h.wait_issued("prod", 1)
    h.wait_issued("dev", 1)
    h.agent.stop()
    assert h.backend.stored == {}
    assert sorted(h.backend.closed) == [("dev", True), ("prod", True)]
    assert read_states(h.agent.state_dir) == []


def test_no_write_after_stop(make_agent: Callable[..., Harness]) -> None:
    h = make_agent()
    h.wait_issued("prod", 1)
    h.agent.stop()
    calls = h.backend.store_calls
    h.advance(3600)
    settle()
    assert h.backend.store_calls == calls


def test_logs_carry_the_refresh_fields_and_no_secret(make_agent: Callable[..., Harness]) -> None:
    with capture_logs() as logs:
        h = make_agent()
        h.wait_issued("prod", 1)
    (event,) = [e for e in logs if e["event"] == "token_refreshed"]
    assert event["connection"] == "prod"
    assert event["registry"] == HOST
    assert event["expires_at"] == "2027-01-15T09:00:00+00:00"
    assert isinstance(event["duration_ms"], int)
    assert "secret-token" not in repr(logs)


def test_signals_reload_and_stop_the_main_loop(tmp_path: Path) -> None:
    backend = FakeBackend()
    config = AgentConfig(state_dir=tmp_path / "s", targets=(Target("prod", "prod"),))
    reloaded = replace(config, targets=(Target("prod", "prod"), Target("ci", "ci")))
    notifier = RecordingNotifier()
    agent = Agent(config, backend, env={}, home=tmp_path, notifier=notifier)

    def drive() -> None:
        wait_for(lambda: backend.issued["prod"] == 1, "first token")
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: backend.issued["ci"] == 1, "reloaded target")
        os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive)
    driver.start()
    started = time.monotonic()
    assert run_until_signalled(agent, lambda: reloaded) == 0
    driver.join()
    assert time.monotonic() - started < 5
    assert not agent.scheduler.running
    assert notifier.states("STOPPING=1") == ["STOPPING=1"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_bad_config_on_sighup_is_rejected(tmp_path: Path) -> None:
    backend = FakeBackend()
    config = AgentConfig(state_dir=tmp_path / "s", targets=(Target("prod", "prod"),))
    agent = Agent(config, backend, env={}, home=tmp_path, notifier=RecordingNotifier())

    def broken() -> AgentConfig:
        raise ConfigError("agent.toml: agent.verfy: unknown key")

    def drive() -> None:
        wait_for(lambda: backend.issued["prod"] == 1, "first token")
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    driver = threading.Thread(target=drive)
    driver.start()
    with capture_logs() as logs:
        assert run_until_signalled(agent, broken) == 0
    driver.join()
    assert any(e["event"] == "reload_rejected" for e in logs)
    assert agent.config is config


def test_unknown_connection_at_start_is_a_config_error(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.unknown.add("typo")
    config = AgentConfig(state_dir=tmp_path / "s", targets=(Target("typo", "typo"),))
    agent = Agent(config, backend, env={}, home=tmp_path, notifier=RecordingNotifier())
    with pytest.raises(ConfigError, match="typo"):
        run_until_signalled(agent, lambda: config)
    assert backend.logins == Counter()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
