"""Wall time and peak memory of the one-shot `token`, side by side with the alternatives.

Every command gets the same connection file pointing at one fake Snowflake on
loopback, so the differences are the tools' own cost: imports, start-up and
requests. Results are ratios against `snow spcs image-registry token`.

    python bench/oneshot.py --snow /path/to/snow \\
        --agent .venv/bin/spcs-registry-agent \\
        --agent .venv-connector4/bin/spcs-registry-agent --runs 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fake_snowflake import DEFAULT_PASSWORD, DEFAULT_USER, FakeSnowflake

# A child that runs one command and reports its own children's peak RSS (KiB):
# RUSAGE_CHILDREN of a fresh process covers exactly that command.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.perf_counter() - start
if done.returncode:
    sys.exit(done.stderr.decode(errors="replace")[-500:])
print(elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

_CONNECTOR_VERSION = "import snowflake.connector as c; print(c.__version__)"

# The floor: one login and one token request over plain HTTP, no connector.
_BARE_HTTP = """
import json, sys, urllib.request
base, account, user, password = sys.argv[1:]
def post(path, body, token=None):
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f'Snowflake Token="{token}"'
    req = urllib.request.Request(base + path, json.dumps(body).encode(), headers)
    return json.load(urllib.request.urlopen(req))["data"]
login = post("/session/v1/login-request",
             {"data": {"ACCOUNT_NAME": account, "LOGIN_NAME": user, "PASSWORD": password}})
issued = post("/session/token-request",
              {"oldSessionToken": login["token"], "requestType": "ISSUE"}, login["masterToken"])
print(json.dumps({"token": issued["sessionToken"], "expires_in": issued["validityInSecondsST"]}))
"""


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_kib: int


def measure(command: list[str], env: dict[str, str]) -> Sample:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, peak = done.stdout.split()
    return Sample(float(seconds), int(peak))


def write_connection(home: Path, fake: FakeSnowflake) -> None:
    home.mkdir(mode=0o700, exist_ok=True)
    config = home / "config.toml"
    config.write_text(
        "[connections.bench]\n"
        f'host = "{fake.host}"\nport = {fake.port}\nprotocol = "http"\n'
        f'account = "{fake.account}"\nuser = "{DEFAULT_USER}"\npassword = "{DEFAULT_PASSWORD}"\n'
    )
    config.chmod(0o600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snow", default=shutil.which("snow"), help="the snow executable")
    parser.add_argument(
        "--agent", action="append", default=[], help="a spcs-registry-agent executable"
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    agents = args.agent or [shutil.which("spcs-registry-agent") or "spcs-registry-agent"]

    with FakeSnowflake() as fake, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "snowflake"
        write_connection(home, fake)
        env = {
            **os.environ,
            "SNOWFLAKE_HOME": str(home),
            "HOME": tmp,
            "SNOWFLAKE_DISABLE_PLATFORM_DETECTION": "true",
        }
        commands: dict[str, list[str]] = {
            "bare HTTP (urllib)": [
                sys.executable,
                "-c",
                _BARE_HTTP,
                fake.url,
                fake.account,
                DEFAULT_USER,
                DEFAULT_PASSWORD,
            ],
        }
        for agent in agents:
            connector = subprocess.run(
                [str(Path(agent).parent / "python"), "-c", _CONNECTOR_VERSION],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            commands[f"spcs-registry-agent (connector {connector})"] = [
                agent,
                "token",
                "-c",
                "bench",
                "--format",
                "JSON",
            ]
        if args.snow:
            commands["snow spcs image-registry token"] = [
                args.snow,
                "spcs",
                "image-registry",
                "token",
                "-c",
                "bench",
                "--format",
                "JSON",
            ]
        for command in commands.values():  # warm the page cache and .pyc files
            measure(command, env)
        results = {
            name: [measure(command, env) for _ in range(args.runs)]
            for name, command in commands.items()
        }

    report(results, baseline="snow spcs image-registry token")


def report(results: dict[str, list[Sample]], baseline: str) -> None:
    medians = {
        name: (
            statistics.median(s.seconds for s in samples),
            statistics.median(s.peak_kib for s in samples),
        )
        for name, samples in results.items()
    }
    base = medians.get(baseline)
    print(f"{'command':<48} {'wall s':>8} {'peak MiB':>9} {'time/snow':>10} {'mem/snow':>9}")
    for name, (seconds, peak) in medians.items():
        ratios = f"{seconds / base[0]:>10.2f} {peak / base[1]:>9.2f}" if base else ""
        print(f"{name:<48} {seconds:>8.3f} {peak / 1024:>9.1f} {ratios}")


if __name__ == "__main__":
    main()
