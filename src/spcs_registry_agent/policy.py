"""Pure timing rules: when to refresh a token, how long to back off, what counts as expired.

No clocks, no threads, no randomness of its own: callers pass ``now`` (epoch seconds) and a
uniform random number in [0, 1), so every decision is reproducible in tests and the agent
alone decides which clock it trusts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A token valid for decades would put the next refresh beyond what datetime (and APScheduler)
# can represent; refreshing at least daily costs nothing and keeps the schedule sane.
MAX_REFRESH_INTERVAL = 86_400.0

# Short tokens cannot honour a margin larger than their life: the margin shrinks to this share
# of the lifetime so that a 10-second token is still refreshed at about 2/3, not immediately.
MAX_MARGIN_SHARE = 0.25


@dataclass(frozen=True)
class Policy:
    """Refresh and backoff settings (validated by config.py, trusted here)."""

    refresh_fraction: float = 2 / 3  # refresh at this share of the token's lifetime ...
    jitter: float = 0.1  # ... plus or minus half of this share, at random
    min_margin: float = 300.0  # ... but never later than this many seconds before expiry
    backoff_initial: float = 1.0  # first retry after a failure, seconds
    backoff_max: float = 300.0  # retries never wait longer than this


def _finite(value: float) -> float:
    """Treat NaN/inf from a confused caller as "no time left" rather than crash or wait forever."""
    return value if math.isfinite(value) else 0.0


def effective_margin(lifetime: float, policy: Policy) -> float:
    """The safety margin before expiry, shrunk for tokens shorter than the configured margin."""
    return max(0.0, min(policy.min_margin, _finite(lifetime) * MAX_MARGIN_SHARE))


def refresh_at(issued_at: float, expires_at: float, policy: Policy, rand: float) -> float:
    """When to refresh a token issued at ``issued_at`` that expires at ``expires_at``.

    About ``refresh_fraction`` of the lifetime with random jitter (so many agents started
    together do not refresh in lockstep), never later than the margin before expiry and
    never later than MAX_REFRESH_INTERVAL after issue. A token with no lifetime is due at once.
    """
    lifetime = _finite(expires_at - issued_at)
    if lifetime <= 0:
        return issued_at
    share = policy.refresh_fraction + policy.jitter * (rand - 0.5)
    at = issued_at + lifetime * min(max(share, 0.0), 1.0)
    latest = min(expires_at - effective_margin(lifetime, policy), issued_at + MAX_REFRESH_INTERVAL)
    return max(issued_at, min(at, latest))


def backoff_delay(failures: int, policy: Policy, rand: float) -> float:
    """Randomised exponential backoff after ``failures`` consecutive failures (1 = first).

    The base doubles per failure from ``backoff_initial`` up to ``backoff_max``; the delay is
    drawn from the upper half of the base so retries spread out but never collapse to zero.
    """
    exponent = min(max(failures, 1) - 1, 64)  # 2**64 s is far past any cap; avoids overflow
    base = min(policy.backoff_max, policy.backoff_initial * 2.0**exponent)
    return base * (0.5 + 0.5 * rand)


def retry_at(
    now: float, failures: int, expires_at: float | None, policy: Policy, rand: float
) -> float:
    """When to retry after a failure: backoff, but never past the current credentials' expiry.

    While the written credentials are still valid the last retry lands no later than their
    expiry; once they have expired (or there are none) the plain backoff applies.
    """
    at = now + backoff_delay(failures, policy, rand)
    if expires_at is not None and expires_at > now:
        return min(at, expires_at)
    return at


def is_expired(now: float, expires_at: float | None) -> bool:
    """Credentials are expired at their expiry instant; having none counts as expired."""
    return expires_at is None or now >= expires_at


@dataclass(frozen=True)
class ClockSample:
    """Wall-clock and monotonic readings taken together."""

    wall: float
    monotonic: float


# Scheduling latency and a busy machine can delay a heartbeat by a little; a jump is more.
DEFAULT_JUMP_TOLERANCE = 5.0


def clock_skew(previous: ClockSample, current: ClockSample) -> float:
    """How much more (or less) wall time passed than monotonic time between two samples.

    CLOCK_MONOTONIC stops during suspend and is not stepped by NTP or an admin, so a
    positive skew means a suspend/resume or a forward step, negative a backward step.
    """
    return (current.wall - previous.wall) - (current.monotonic - previous.monotonic)


def clock_jumped(
    previous: ClockSample, current: ClockSample, tolerance: float = DEFAULT_JUMP_TOLERANCE
) -> bool:
    """True when the wall clock moved against the monotonic clock by more than ``tolerance``."""
    return abs(clock_skew(previous, current)) > tolerance
