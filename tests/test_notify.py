"""sd_notify over a real AF_UNIX datagram socket, path and abstract addresses."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spcs_registry_agent.notify import Notifier, socket_address, watchdog_interval


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_sends_fields_as_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("2 targets ok")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 targets ok"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.status("1 ok, 1 failing")
    assert sock.recv(4096) == b"STATUS=1 ok, 1 failing"
    assert notifier.reloading(123)
    assert sock.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=123"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket_with_leading_at() -> None:
    name = f"spcs-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")


def test_unsupported_address_is_ignored() -> None:
    assert socket_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert socket_address({"NOTIFY_SOCKET": ""}) is None
    assert socket_address({"NOTIFY_SOCKET": "@x"}) == "\0x"
    assert socket_address({"NOTIFY_SOCKET": "/run/x"}) == "/run/x"


def test_dead_socket_is_not_fatal(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).send("READY=1")


def test_empty_message_is_not_sent(receiver: tuple[socket.socket, str]) -> None:
    assert not Notifier({"NOTIFY_SOCKET": receiver[1]}).send()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(pid)}, pid) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval({}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid) is None
