"""Running the CLI the way users do: a separate process with the test's environment."""

from __future__ import annotations

import subprocess
import sys

#: The command line of the installed tool under the interpreter running the tests,
#: so each connector line's virtualenv runs its own copy.
CLI = (sys.executable, "-m", "spcs_registry_agent")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
