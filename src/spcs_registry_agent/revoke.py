"""Logging out the Snowflake session that a stored registry token belongs to.

A registry token is a session token of the session that issued it, and Snowflake's logout
request (`POST /session?delete=true`, what the connector sends on close) accepts any of
that session's tokens. `login` keeps no session around - it must not log out, or the
token would die with it - so a later `logout --revoke` can only reach that session
through the stored token itself. One plain HTTP request; no connector needed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import structlog

from spcs_registry_agent.errors import AgentError

#: Snowflake codes after which only a new login helps: the session was deleted, or its
#: session or master token expired, is unknown or invalid. A logout then has nothing to do.
SESSION_GONE_CODES = frozenset({"390111", "390112", "390113", "390114", "390115"})

log = structlog.get_logger(__name__)


def snowflake_url(params: Mapping[str, Any]) -> str:
    """protocol://host:port of the connection, with the connector's defaults."""
    protocol = str(params.get("protocol") or "https")
    host = params.get("host") or f"{params.get('account')}.snowflakecomputing.com"
    port = params.get("port") or (443 if protocol == "https" else 80)
    return f"{protocol}://{host}:{port}"


def token_of(docker_password: str) -> str:
    """The token inside Docker's password (`{"token": ..., "expires_in": ...}`)."""
    try:
        token = json.loads(docker_password).get("token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise AgentError("the stored password is not a registry token; nothing to revoke")
    return token


def revoke_token(params: Mapping[str, Any], token: str, *, timeout: float = 30.0) -> bool:
    """Log out the session of `token`; False if it was already gone. Raises AgentError."""
    url = snowflake_url(params)
    request = urllib.request.Request(  # noqa: S310 - the connection's own http(s) URL
        f"{url}/session?delete=true",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f'Snowflake Token="{token}"',
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise AgentError(f"Snowflake at {url} answered HTTP {e.code} to the logout") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise AgentError(f"cannot log the session out at {url}: {reason}") from None
    if not isinstance(answer, dict):
        raise AgentError(f"Snowflake at {url} answered the logout with something unexpected")
    if answer.get("success"):
        log.info("snowflake_session_revoked", url=url)
        return True
    if str(answer.get("code")) in SESSION_GONE_CODES:
        log.info("snowflake_session_already_gone", url=url, code=answer.get("code"))
        return False
    raise AgentError(
        f"Snowflake refused the logout: {answer.get('message')} (code {answer.get('code')})"
    )
