"""Make a directory read-only for real, also for root (which ignores permission bits)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Root gets a read-only bind mount over `directory` (EROFS); others get mode 0500."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(mode)
        return
    path = str(directory)
    if subprocess.run(["mount", "--bind", path, path], check=False).returncode != 0:
        pytest.skip("running as root without permission to mount: cannot make a dir read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path, path], check=True)
        yield
    finally:
        subprocess.run(["umount", path], check=True)
