"""Failures reported to the user as one line and an exit code.

Messages must never carry a secret: they are printed and logged as they are.
"""

from __future__ import annotations


class AgentError(Exception):
    """A failure at run time (network, server, Docker): exit code 1."""

    exit_code = 1


class ConfigError(AgentError):
    """Bad input - flags, files, permissions: exit code 2."""

    exit_code = 2
