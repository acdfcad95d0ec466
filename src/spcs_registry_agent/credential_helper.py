"""Docker credential helpers (`docker-credential-<name>`) run with a time limit.

The docker SDK's `docker.credentials.Store` already speaks the helper protocol (JSON over
stdin/stdout, `store|get|erase`) and knows its quirks (e.g. `pass` answering an empty
object for unknown hosts), but it runs the helper with `subprocess.check_output` and no
timeout: a helper waiting for a GPG pinentry or a locked keyring would hang `login` and the
agent forever. `TimedStore` keeps the SDK's protocol handling and replaces only the one
method that starts the process (`Store._execute`, unchanged since docker-pycreds), adding a
deadline, killing the helper's whole process group when it passes, and error messages that
never quote the secret. This module imports the docker SDK, so import it lazily.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable

from docker.credentials import Store, errors

NOT_FOUND_MARKERS = ("credentials not found", "not in the password store")


class TimedStore(Store):  # type: ignore[misc]  # the docker SDK ships no type hints
    """`docker.credentials.Store` whose helper runs are bounded by `timeout` seconds."""

    def __init__(self, name: str, *, timeout: float) -> None:
        # Not calling Store.__init__: it warns (warnings.warn) when the binary is missing,
        # which we report ourselves as a one-line error on first use.
        self.program = f"docker-credential-{name}"
        self.exe = shutil.which(self.program)
        self.environment = None
        self.timeout = timeout
        self._secrets: tuple[str, ...] = ()

    def store(self, server: str, username: str, secret: str) -> bytes:
        self._secrets = _secret_parts(secret)
        try:
            return super().store(server, username, secret)  # type: ignore[no-any-return]
        finally:
            self._secrets = ()

    def _execute(self, subcmd: str, data_input: bytes | None) -> bytes:
        if self.exe is None:
            raise errors.StoreError(f"{self.program} not found in PATH")
        try:
            proc = subprocess.Popen(
                [self.exe, subcmd],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # so a timeout can kill gpg & co. along with it
            )
        except OSError as e:
            raise errors.StoreError(f"cannot run {self.program}: {e.strerror}") from e
        try:
            out, err = proc.communicate(data_input, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise errors.StoreError(
                f"{self.program} {subcmd} timed out after {self.timeout:g}s"
            ) from None
        if proc.returncode != 0:
            detail = _first_line((out + err).decode("utf-8", "replace"), self._secrets)
            if any(marker in detail for marker in NOT_FOUND_MARKERS):
                raise errors.CredentialsNotFound(f"no credentials in {self.program}")
            raise errors.StoreError(
                f"{self.program} {subcmd} failed (exit {proc.returncode}): {detail}"
            )
        return out


def _secret_parts(secret: str) -> tuple[str, ...]:
    """The secret and its JSON string values (the bare token) - what must never be quoted."""
    parts = [secret]
    try:
        value = json.loads(secret)
    except ValueError:
        value = None
    if isinstance(value, dict):
        parts += [v for v in value.values() if isinstance(v, str) and v]
    return tuple(parts)


def _first_line(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "no output"
