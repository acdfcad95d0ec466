"""The long-running agent: keeps every configured registry logged in until stopped.

APScheduler runs one date job per target (its next refresh); a small thread of our own runs
the heartbeat on the monotonic clock, because APScheduler's triggers live in wall time and a
backward clock step would stall them (and a heartbeat job with them) by the step. Timing
decisions come from policy.py; this module wires them to a clock, a scheduler, Snowflake
sessions and Docker's credential store. Time is read through an injectable Clock and every
scheduled instant is handed to APScheduler as a delay from the scheduler's own "now", so
tests can move either clock and call `wakeup()`.

Why the details matter:
- `misfire_grace_time=None`: after a suspend a late job must still run (APScheduler's
  default drops a date job more than 1 s late - the refresh would be lost for good).
- One kept Snowflake session per connection (sessions.py): tokens are ISSUEd on it; logging
  in again only when the server says the session is gone (master token expired, revoked).
- A failed refresh never touches the credentials already written.
- The heartbeat compares wall and monotonic time: a suspend/resume or a clock step makes
  every target refresh at once instead of trusting a schedule computed before the jump.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from spcs_registry_agent import policy
from spcs_registry_agent.config import AgentConfig, Target, default_state_dir
from spcs_registry_agent.connections import ResolvedConnection
from spcs_registry_agent.errors import AgentError, ConfigError
from spcs_registry_agent.notify import Notifier, watchdog_interval
from spcs_registry_agent.sessions import SessionLike, SessionPool
from spcs_registry_agent.snowflake import RegistryToken, SnowflakeError
from spcs_registry_agent.state import (
    TargetState,
    iso_time,
    prune_states,
    remove_state,
    write_state,
)

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)

STOP_BUDGET = 5.0  # SIGTERM to exit, seconds: systemd's and CI runners' patience is short
# Runs of one target's job that may wait on its lock (see _refresh_job); more are dropped.
MAX_JOB_INSTANCES = 8
EXIT_GRACE = 1.5  # after stop(), how long an in-flight refresh may take before we leave it
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Clock(Protocol):
    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    def sample(self) -> policy.ClockSample:
        """Both readings at one instant, for comparing how far each clock moved."""
        ...


class SystemClock:
    """Wall clock for expiry (tokens expire in wall time), monotonic for durations."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sample(self) -> policy.ClockSample:
        return policy.ClockSample(time.time(), time.monotonic())


class Backend(Protocol):
    """The agent's I/O with Snowflake and Docker; LiveBackend is the real one."""

    def resolve(self, targets: Sequence[Target]) -> dict[str, ResolvedConnection]: ...
    def login(self, connection: ResolvedConnection) -> SessionLike: ...
    def store(self, host: str, secret: str, config: AgentConfig) -> str: ...
    def verify(self, host: str, secret: str, config: AgentConfig) -> None: ...
    def erase(self, host: str, config: AgentConfig) -> bool: ...


class LiveBackend:
    """Real connections (snowflake-cli rules), the connector, Docker's config and helpers."""

    def __init__(self, env: Mapping[str, str], home: Path) -> None:
        self.env = dict(env)
        self.home = home

    def resolve(self, targets: Sequence[Target]) -> dict[str, ResolvedConnection]:
        """Resolve every target now, so a bad name fails the start or the reload, not later."""
        from spcs_registry_agent.connections import load_connection_files, resolve_connection

        loaded = load_connection_files(self.env, self.home)
        resolved = {}
        for target in targets:
            try:
                resolved[target.name] = resolve_connection(
                    loaded,
                    name=target.connection,
                    flags=target.inline_params,
                    env=self.env,
                    temporary=bool(target.inline),
                )
            except ConfigError as error:
                raise ConfigError(f"target {target.name}: {error}") from None
        return resolved

    def login(self, connection: ResolvedConnection) -> SessionLike:
        from spcs_registry_agent.snowflake import Session

        return Session.login(connection)

    def store(self, host: str, secret: str, config: AgentConfig) -> str:
        from spcs_registry_agent.docker_credentials import store_credentials

        return store_credentials(host, secret, self._docker_dir(config))

    def verify(self, host: str, secret: str, config: AgentConfig) -> None:
        from spcs_registry_agent.docker_credentials import USERNAME
        from spcs_registry_agent.verify import verify_credentials

        if config.verify != "none":
            verify_credentials(host, USERNAME, secret, config.verify, env=self.env)

    def erase(self, host: str, config: AgentConfig) -> bool:
        from spcs_registry_agent.docker_credentials import erase_credentials

        return erase_credentials(host, self._docker_dir(config))

    def _docker_dir(self, config: AgentConfig) -> Path:
        from spcs_registry_agent.docker_credentials import docker_config_dir

        return docker_config_dir(config.docker_config, self.env, self.home)


@dataclass(eq=False)
class _Target:
    """A target's live state; `lock` is held while it is being refreshed or dropped."""

    target: Target
    connection: ResolvedConnection
    host: str | None = None
    expires_at: float | None = None
    last_refresh: float | None = None
    next_refresh: float | None = None
    failures: int = 0
    last_error: str | None = None
    written_to: str | None = None
    tried: bool = False
    dropped: bool = False
    ticket: int = -1  # the newest planned refresh; older job runs are stale
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def connection_label(self) -> str:
        return self.target.connection or self.connection.name or "inline"


class Agent:
    """Schedules refreshes for a set of targets; start(), reload(), stop()."""

    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        *,
        env: Mapping[str, str],
        home: Path,
        clock: Clock | None = None,
        rand: Callable[[], float] = random.random,
        notifier: Notifier | None = None,
        max_workers: int = 20,
    ) -> None:
        self.config = config
        self.backend = backend
        self.clock: Clock = clock or SystemClock()
        self.rand = rand
        self.notifier = notifier or Notifier(env)
        self.sessions = SessionPool(backend.login)
        self.state_dir = config.state_dir or default_state_dir(env, home)
        self._watchdog = watchdog_interval(env, os.getpid())
        self._targets: dict[str, _Target] = {}
        self._lock = threading.Lock()  # guards _targets and the READY bookkeeping
        self._write_lock = threading.Lock()  # a credential write is never cut in half
        self._writes_closed = False
        self._stopping = threading.Event()
        self._tickets = itertools.count()
        self._beat_now = threading.Event()
        self._beater = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)
        self._ready_sent = False
        self._last_sample = self.clock.sample()
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            executors={"default": ThreadPoolExecutor(max_workers)},
            job_defaults={
                "misfire_grace_time": None,
                "coalesce": True,
                "max_instances": MAX_JOB_INSTANCES,
            },
        )

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve every target (ConfigError stops here), then log in to all concurrently."""
        resolved = self.backend.resolve(self.config.targets)
        prune_states(self.state_dir, [t.name for t in self.config.targets])
        self.scheduler.start()
        self._beater.start()
        for target in self.config.targets:
            self._add(target, resolved[target.name])
        log.info(
            "agent_started",
            targets=[t.name for t in self.config.targets],
            heartbeat_s=self.heartbeat_interval,
        )

    def reload(self, config: AgentConfig) -> bool:
        """Switch to `config`: add new targets, drop removed ones, keep unchanged sessions.

        A config whose connections do not resolve is rejected and the running one kept.
        """
        self.notifier.reloading(time.monotonic_ns() // 1000)
        try:
            resolved = self.backend.resolve(config.targets)
        except ConfigError as error:
            log.error("reload_rejected", reason=str(error))
            self.notifier.ready(self.status_line())
            return False
        old_config, self.config = self.config, config
        wanted = {t.name: t for t in config.targets}
        with self._lock:
            current = dict(self._targets)
        kept: list[_Target] = []
        dropped: list[_Target] = []
        for name, live in current.items():
            same = wanted.get(name) == live.target and resolved[name] == live.connection
            (kept if name in wanted and same else dropped).append(live)
        for live in dropped:
            self._drop(live, revoke=old_config.on_exit == "revoke")
        kept_names = {live.name for live in kept}
        added = [t for t in config.targets if t.name not in kept_names]
        for target in added:
            self._add(target, resolved[target.name])
        prune_states(self.state_dir, list(wanted))
        log.info(
            "config_reloaded",
            added=[t.name for t in added],
            dropped=[t.name for t in dropped],
            kept=sorted(kept_names),
        )
        self.notifier.ready(self.status_line())
        return True

    def stop(self) -> None:
        """Finish an in-flight credential write, stop scheduling; on_exit=revoke cleans up."""
        self.notifier.stopping()
        self._stopping.set()
        self._beat_now.set()
        with self._write_lock:
            self._writes_closed = True
        if self.scheduler.running:  # start() may have failed before starting it
            self.scheduler.shutdown(wait=False)
        with self._lock:
            targets = list(self._targets.values())
        if self.config.on_exit == "revoke":
            self._in_parallel(self._revoke, targets)
        else:  # close the connections without logging out: the written tokens keep working
            self._in_parallel(partial(self._close, revoke=False), targets)
        log.info("agent_stopped", targets=len(targets), on_exit=self.config.on_exit)

    def busy(self) -> bool:
        """Whether a refresh is still running (its network call can outlive stop())."""
        with self._lock:
            return any(live.lock.locked() for live in self._targets.values())

    @property
    def heartbeat_interval(self) -> float:
        if self._watchdog is not None:
            return min(self.config.heartbeat, self._watchdog)
        return self.config.heartbeat

    # ---- targets --------------------------------------------------------------------------

    def _add(self, target: Target, connection: ResolvedConnection) -> None:
        live = _Target(target, connection, host=target.host)
        self.sessions.join(target.name, connection)
        with self._lock:
            self._targets[target.name] = live
        self._run_at(live, self.clock.time())

    def _drop(self, live: _Target, *, revoke: bool) -> None:
        """Forget a target: wait for its in-flight refresh, close (or revoke) its session."""
        with self._lock:
            if self._targets.get(live.name) is live:
                del self._targets[live.name]
        acquired = live.lock.acquire(timeout=STOP_BUDGET)
        try:
            live.dropped = True
            if revoke:
                self._revoke(live)
            else:
                self._close(live, revoke=False)
            remove_state(self.state_dir, live.name)
        finally:
            if acquired:
                live.lock.release()

    def _in_parallel(self, action: Callable[[_Target], None], targets: Sequence[_Target]) -> None:
        """Close or revoke in parallel so that several slow ones still fit the stop budget."""
        threads = [threading.Thread(target=action, args=(t,), daemon=True) for t in targets]
        deadline = time.monotonic() + STOP_BUDGET - 1.0
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _revoke(self, live: _Target) -> None:
        """Remove the entry we wrote, then log the session out (which revokes its tokens)."""
        if live.host is not None and live.written_to is not None:
            try:
                erased = self.backend.erase(live.host, self.config)
                log.info("credentials_erased", target=live.name, registry=live.host, found=erased)
            except AgentError as error:
                log.error("credentials_erase_failed", target=live.name, reason=str(error))
        self._close(live, revoke=True)
        remove_state(self.state_dir, live.name)

    def _close(self, live: _Target, *, revoke: bool) -> None:
        """Let go of the target's session; the last target using it closes (or revokes) it."""
        self.sessions.leave(live.name, live.connection, revoke=revoke)

    # ---- scheduling -----------------------------------------------------------------------

    def _when(self, at: float) -> datetime:
        """An agent-clock instant as the scheduler's datetime: its own now plus the delay."""
        delay = max(0.0, at - self.clock.time())
        return datetime.now(timezone.utc) + timedelta(seconds=delay)

    def _run_at(self, live: _Target, at: float) -> None:
        if self._stopping.is_set():
            return
        live.ticket = next(self._tickets)
        self.scheduler.add_job(
            self._refresh_job,
            DateTrigger(self._when(at)),
            args=[live.name, live.ticket],
            id=live.name,
            name=f"refresh {live.name}",
            replace_existing=True,
        )
        self.scheduler.wakeup()

    def wakeup(self) -> None:
        """Check the clocks and the schedule now rather than at the next heartbeat."""
        self._beat_now.set()
        self.scheduler.wakeup()

    def _beat_loop(self) -> None:
        while not self._stopping.is_set():
            self._beat_now.wait(self.heartbeat_interval)  # monotonic: immune to clock steps
            self._beat_now.clear()
            if self._stopping.is_set():
                return
            try:
                self._heartbeat()
            except Exception:  # the heartbeat must outlive any one bad beat
                log.exception("heartbeat_failed")

    def _heartbeat(self) -> None:
        """Detect suspend/resume and clock steps; feed the systemd watchdog."""
        sample = self.clock.sample()
        previous, self._last_sample = self._last_sample, sample
        if self._watchdog is not None and self.scheduler.running:
            self.notifier.watchdog()
        if not policy.clock_jumped(previous, sample):
            return
        skew = policy.clock_skew(previous, sample)
        with self._lock:
            targets = list(self._targets.values())
        # After a forward jump tokens may have expired; after a backward one our wall-clock
        # schedule would run late. Fresh tokens are cheap: refresh every target now.
        log.warning("clock_jump_detected", skew_s=round(skew, 1), targets=len(targets))
        for live in targets:
            if not live.lock.locked():
                self._run_at(live, sample.wall)

    # ---- refreshing -----------------------------------------------------------------------

    def _refresh_job(self, name: str, ticket: int) -> None:
        """Run a planned refresh unless a newer plan replaced it.

        A refresh that took longer than the token's refresh point (a connector riding out an
        outage) plans the next one "now", which starts while this run is still finishing:
        that run waits for the lock instead of being skipped - APScheduler would drop a
        skipped date job, and the target would never refresh again.
        """
        with self._lock:
            live = self._targets.get(name)
        if live is None or self._stopping.is_set():
            return
        with live.lock:
            if live.ticket == ticket and not live.dropped and not self._stopping.is_set():
                self._refresh(live)

    def _refresh(self, live: _Target) -> None:
        started = self.clock.monotonic()
        try:
            token, issued_at = self._issue(live)
            if token.expires_in <= 0:
                raise SnowflakeError(
                    f"{live.name}: Snowflake issued a token that is already expired"
                )
            host = live.host or self._discover_host(live)
            secret = token.docker_password()
            self.backend.verify(host, secret, self.config)
            with self._write_lock:
                if self._writes_closed:
                    return
                live.written_to = self.backend.store(host, secret, self.config)
        except AgentError as error:
            self._failed(live, str(error), started)
        except Exception as error:  # a bug or an unexpected library error: keep running
            log.exception("token_refresh_crashed", target=live.name)
            self._failed(live, f"internal error: {type(error).__name__}", started)
        else:
            self._succeeded(live, issued_at, issued_at + token.expires_in, started)
        self._after_attempt(live)

    def _issue(self, live: _Target) -> tuple[RegistryToken, float]:
        """A token from the kept session and when it arrived; a new login only if needed.

        The lifetime counts from when Snowflake answered. The time the answer arrived is off
        by half a round trip; the time the request started can be off by as long as the
        connector spent retrying (4.x rides out a 503 outage inside one call).
        """
        token = self.sessions.issue_token(live.connection)
        return token, self.clock.time()

    def _discover_host(self, live: _Target) -> str:
        live.host = self.sessions.registry_host(
            live.connection, private_link=live.target.private_link
        )
        return live.host

    def _succeeded(
        self, live: _Target, issued_at: float, expires_at: float, started: float
    ) -> None:
        live.expires_at = expires_at
        live.last_refresh = issued_at
        live.failures = 0
        live.last_error = None
        live.next_refresh = policy.refresh_at(
            issued_at, expires_at, self.config.policy, self.rand()
        )
        log.info(
            "token_refreshed",
            target=live.name,
            connection=live.connection_label,
            registry=live.host,
            expires_at=iso_time(expires_at),
            next_refresh=iso_time(live.next_refresh),
            written_to=live.written_to,
            duration_ms=round((self.clock.monotonic() - started) * 1000),
        )

    def _failed(self, live: _Target, reason: str, started: float) -> None:
        now = self.clock.time()
        live.failures += 1
        live.last_error = reason
        live.next_refresh = policy.retry_at(
            now, live.failures, live.expires_at, self.config.policy, self.rand()
        )
        expired = policy.is_expired(now, live.expires_at)
        (log.error if expired else log.warning)(
            "token_refresh_failed",
            target=live.name,
            connection=live.connection_label,
            registry=live.host,
            reason=reason,
            failures=live.failures,
            retry_at=iso_time(live.next_refresh),
            held="expired" if expired else f"valid until {iso_time(live.expires_at)}",
            duration_ms=round((self.clock.monotonic() - started) * 1000),
        )

    def _after_attempt(self, live: _Target) -> None:
        live.tried = True
        if live.next_refresh is not None and not live.dropped:
            self._run_at(live, live.next_refresh)
        self._save(live)
        self._report()

    def _save(self, live: _Target) -> None:
        if live.dropped:
            return
        try:
            write_state(
                self.state_dir,
                TargetState(
                    name=live.name,
                    connection=live.connection_label,
                    registry=live.host,
                    expires_at=live.expires_at,
                    last_refresh=live.last_refresh,
                    next_refresh=live.next_refresh,
                    failures=live.failures,
                    last_error=live.last_error,
                    written_to=live.written_to,
                    updated_at=self.clock.time(),
                    pid=os.getpid(),
                ),
            )
        except OSError as error:
            log.warning("state_write_failed", target=live.name, reason=type(error).__name__)

    # ---- reporting ------------------------------------------------------------------------

    def status_line(self) -> str:
        """systemd's STATUS=: how many targets hold valid credentials, the soonest expiry."""
        now = self.clock.time()
        with self._lock:
            targets = list(self._targets.values())
        ok = [t for t in targets if not policy.is_expired(now, t.expires_at) and not t.failures]
        failing = sorted(t.name for t in targets if t.failures)
        parts = [f"{len(ok)}/{len(targets)} ok"]
        if failing:
            parts.append(f"failing: {', '.join(failing)}")
        expiries = [t.expires_at for t in targets if t.expires_at is not None]
        if expiries:
            parts.append(f"soonest expiry {iso_time(min(expiries))}")
        return "; ".join(parts)

    def _report(self) -> None:
        with self._lock:
            targets = list(self._targets.values())
            ready = (
                not self._ready_sent
                and all(t.tried for t in targets)
                and any(t.written_to for t in targets)
            )
            if ready:
                self._ready_sent = True
        if ready:
            self.notifier.ready(self.status_line())
            log.info("agent_ready", targets=len(targets))
        else:
            self.notifier.status(self.status_line())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per target, what the agent holds right now (tests and diagnostics; no secrets)."""
        with self._lock:
            targets = list(self._targets.values())
        return {
            t.name: {
                "registry": t.host,
                "expires_at": t.expires_at,
                "next_refresh": t.next_refresh,
                "failures": t.failures,
                "last_error": t.last_error,
                "written_to": t.written_to,
                "logged_in": self.sessions.logged_in(t.connection),
            }
            for t in targets
        }


def run_until_signalled(agent: Agent, load: Callable[[], AgentConfig]) -> int:
    """Main-thread loop: SIGHUP reloads through `load`, SIGTERM/SIGINT stop; returns 0.

    Signals reach this loop through a socket (signal.set_wakeup_fd), so the handlers do no
    work of their own and can never deadlock against a lock the main thread holds.
    """
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    previous_fd = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _ignore) for sig in SIGNALS}
    try:
        agent.start()
        while True:
            select.select([receiver], [], [])
            numbers = receiver.recv(64)
            if any(n in (signal.SIGTERM, signal.SIGINT) for n in numbers):
                log.info("agent_stopping", signal="SIGTERM/SIGINT")
                break
            if signal.SIGHUP in numbers:
                _reload(agent, load)
    finally:
        agent.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        receiver.close()
        sender.close()
    return 0


def _reload(agent: Agent, load: Callable[[], AgentConfig]) -> None:
    log.info("agent_reloading", signal="SIGHUP")
    try:
        config = load()
    except ConfigError as error:
        agent.notifier.reloading(time.monotonic_ns() // 1000)
        log.error("reload_rejected", reason=str(error))
        agent.notifier.ready(agent.status_line())
        return
    agent.reload(config)


def _ignore(signum: int, frame: Any) -> None:
    """A handler must be installed for set_wakeup_fd to see the signal; the loop acts on it."""


def serve(
    config: AgentConfig, load: Callable[[], AgentConfig], env: Mapping[str, str], home: Path
) -> int:
    """`run`: the real agent until a signal stops it; returns the exit code.

    A refresh stuck in a network call cannot be interrupted and its worker thread would hold
    the interpreter open, so after a grace period the process leaves without it - credential
    writes are closed by then, so nothing is cut in half.
    """
    agent = Agent(config, LiveBackend(env, home), env=env, home=home)
    code = run_until_signalled(agent, load)
    deadline = time.monotonic() + EXIT_GRACE
    while agent.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    if agent.busy():
        log.warning("exit_abandoning_refresh", reason="a network call is still in flight")
        logging.shutdown()
        os._exit(code)
    return code
