"""Watch a Docker config.json while writers race: every read must parse and keep 0600."""

from __future__ import annotations

import contextlib
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def watching(path: Path) -> Iterator[list[str]]:
    """Reads `path` in a loop meanwhile; collects every invalid JSON or mode change seen."""
    problems: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                json.loads(path.read_bytes())
                if stat.S_IMODE(path.stat().st_mode) != 0o600:
                    problems.append("mode changed")
            except FileNotFoundError:
                problems.append("config.json missing")
            except ValueError as e:
                problems.append(f"invalid JSON: {e}")
            stop.wait(0.0005)  # leave the writers some of the GIL

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        yield problems
    finally:
        stop.set()
        thread.join()
