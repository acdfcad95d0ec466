"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET, no dependency.

Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op, so the agent can report
unconditionally. A failing send is never fatal: supervision is best-effort.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


def socket_address(env: Mapping[str, str]) -> str | None:
    """The address to send to; a leading '@' means Linux's abstract namespace (NUL byte)."""
    address = env.get("NOTIFY_SOCKET", "")
    if not address or not (address.startswith("/") or address.startswith("@")):
        return None  # unset, or vsock and the like, which this agent does not speak
    return "\0" + address[1:] if address.startswith("@") else address


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), None when not asked for.

    WATCHDOG_PID, when set, names the process systemd watches; another process must not ping.
    """
    watched = env.get("WATCHDOG_PID")
    if watched and watched != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class Notifier:
    """Sends state strings such as "READY=1" or "STATUS=..." to the service manager."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.address = socket_address(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram with ``fields`` joined by newlines; True when it was delivered."""
        if self.address is None or not fields:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as error:
            log.warning("sd_notify_failed", reason=error.__class__.__name__, errno=error.errno)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self, monotonic_usec: int) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 for Type=notify-reload.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
