"""Idle cost of `run`: resident memory and CPU over a minute, with 1 and with 20 targets.

The agent runs against one fake Snowflake on loopback with hour-long tokens, so after the
first logins it is idle the way it is on a build host between refreshes: only the
heartbeat (and, under systemd, the watchdog) wakes it. CPU is the process's own
utime+stime over the window, from /proc; RSS is sampled every second.

    python bench/agent_idle.py --targets 1 --targets 20 --seconds 60 \\
        [--agent .venv-connector4/bin/spcs-registry-agent]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fake_snowflake import DEFAULT_PASSWORD, DEFAULT_USER, FakeSnowflake

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Result:
    targets: int
    startup_s: float
    cpu_s: float
    seconds: float
    rss_mib_end: float
    rss_mib_max: float

    def line(self) -> str:
        share = 100 * self.cpu_s / self.seconds
        return (
            f"{self.targets:>3} targets: ready in {self.startup_s:.2f} s; idle over "
            f"{self.seconds:.0f} s: CPU {self.cpu_s:.3f} s ({share:.2f} %), "
            f"RSS {self.rss_mib_end:.1f} MiB (max {self.rss_mib_max:.1f})"
        )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB / 1024


def measure(agent: str, targets: int, seconds: float, root: Path) -> Result:
    with FakeSnowflake(token_validity=3600) as fake:
        home = root / f"t{targets}"
        connections = "".join(
            f'[connections.c{i}]\nhost = "{fake.host}"\nport = {fake.port}\nprotocol = "http"\n'
            f'account = "{fake.account}"\nuser = "{DEFAULT_USER}"\n'
            f'password = "{DEFAULT_PASSWORD}"\n'
            for i in range(targets)
        )
        (home / "snowflake").mkdir(parents=True)
        (home / "snowflake" / "config.toml").write_text(connections)
        (home / "snowflake" / "config.toml").chmod(0o600)
        registries = "".join(
            f'[[registry]]\nconnection = "c{i}"\nhost = "r{i}.registry.example"\n'
            for i in range(targets)
        )
        config = home / "agent.toml"
        config.write_text(
            f'[agent]\ndocker_config = "{home / "docker"}"\nstate_dir = "{home / "state"}"\n'
            f'verify = "none"\n\n{registries}'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNOWFLAKE_", "DOCKER_"))}
        env.update(
            HOME=str(home),
            SNOWFLAKE_HOME=str(home / "snowflake"),
            SNOWFLAKE_DISABLE_PLATFORM_DETECTION="true",
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [agent, "run", "--config", str(config), "--log-format", "json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while len(list((home / "state").glob("*.json"))) < targets:
                if proc.poll() is not None or time.monotonic() - started > 60:
                    raise SystemExit(f"agent did not get ready (exit {proc.returncode})")
                time.sleep(0.05)
            startup = time.monotonic() - started
            time.sleep(2)  # let the first refresh's threads settle
            cpu_before, window_start = cpu_seconds(proc.pid), time.monotonic()
            samples = []
            while time.monotonic() - window_start < seconds:
                samples.append(rss_mib(proc.pid))
                time.sleep(1)
            cpu = cpu_seconds(proc.pid) - cpu_before
            window = time.monotonic() - window_start
            rss_end = rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        return Result(targets, startup, cpu, window, rss_end, max(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default=str(Path(sys.executable).parent / "spcs-registry-agent"))
    parser.add_argument("--targets", type=int, action="append")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for targets in args.targets or [1, 20]:
            result = measure(args.agent, targets, args.seconds, Path(tmp))
            print(result.line(), flush=True)
            results.append(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
