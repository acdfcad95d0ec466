"""The timing policy as pure functions: refresh time, margin, backoff, expiry, clock jumps."""

from __future__ import annotations

import math

import pytest

from spcs_registry_agent.policy import (
    MAX_REFRESH_INTERVAL,
    ClockSample,
    Policy,
    backoff_delay,
    clock_jumped,
    clock_skew,
    effective_margin,
    is_expired,
    refresh_at,
    retry_at,
)

T0 = 1_800_000_000.0
DEFAULT = Policy()


@pytest.mark.parametrize(
    ("rand", "expected"),
    [(0.5, 2400.0), (0.0, 2400.0 - 180.0), (0.999999, 2400.0 + 180.0 * 0.999998)],
)
def test_refresh_at_two_thirds_with_jitter_for_an_hour_token(rand: float, expected: float) -> None:
    assert refresh_at(T0, T0 + 3600, DEFAULT, rand) == pytest.approx(T0 + expected)


def test_refresh_at_jitter_spreads_over_the_whole_band() -> None:
    times = [refresh_at(T0, T0 + 3600, DEFAULT, r / 100) - T0 for r in range(100)]
    assert min(times) == pytest.approx(2220.0)
    assert max(times) == pytest.approx(2580.0, abs=4)
    assert times == sorted(times)


def test_ten_second_tokens_refresh_every_six_to_seven_seconds() -> None:
    times = [refresh_at(T0, T0 + 10, DEFAULT, r / 10) - T0 for r in range(10)]
    assert all(6.1 <= t <= 7.2 for t in times), times


def test_refresh_never_later_than_the_margin_before_expiry() -> None:
    late = Policy(refresh_fraction=0.99, jitter=0.0, min_margin=300.0)
    assert refresh_at(T0, T0 + 3600, late, 0.5) == pytest.approx(T0 + 3300)


def test_jitter_cannot_push_past_the_margin() -> None:
    wide = Policy(refresh_fraction=0.9, jitter=0.5, min_margin=60.0)
    assert refresh_at(T0, T0 + 3600, wide, 0.999) == pytest.approx(T0 + 3540)


def test_jitter_cannot_move_refresh_before_issue() -> None:
    wide = Policy(refresh_fraction=0.1, jitter=0.9, min_margin=0.0)
    assert refresh_at(T0, T0 + 100, wide, 0.0) == T0


def test_margin_shrinks_for_validity_shorter_than_the_margin() -> None:
    # 100 s token, 300 s margin: the margin becomes a quarter of the lifetime.
    assert effective_margin(100, DEFAULT) == 25.0
    assert refresh_at(T0, T0 + 100, Policy(refresh_fraction=0.95, jitter=0), 0.5) == T0 + 75


def test_margin_is_the_configured_one_for_long_tokens() -> None:
    assert effective_margin(3600, DEFAULT) == 300.0
    assert effective_margin(3600, Policy(min_margin=0)) == 0.0


@pytest.mark.parametrize("lifetime", [0.0, -1.0, -3600.0])
def test_zero_or_negative_lifetime_is_due_at_once(lifetime: float) -> None:
    assert refresh_at(T0, T0 + lifetime, DEFAULT, 0.7) == T0
    assert effective_margin(lifetime, DEFAULT) == 0.0


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_expiry_is_treated_as_no_lifetime(bad: float) -> None:
    assert refresh_at(T0, bad, DEFAULT, 0.5) == T0


def test_huge_lifetime_is_refreshed_at_least_daily() -> None:
    assert refresh_at(T0, T0 + 10**12, DEFAULT, 0.5) == T0 + MAX_REFRESH_INTERVAL
    # A long but not huge token keeps the 2/3 rule.
    assert refresh_at(T0, T0 + 36_000, DEFAULT, 0.5) == pytest.approx(T0 + 24_000)


def test_refresh_is_always_between_issue_and_expiry() -> None:
    for lifetime in (1, 2, 5, 10, 59, 60, 61, 299, 300, 301, 3600, 86_400 * 3):
        for r in (0.0, 0.25, 0.5, 0.75, 0.999):
            at = refresh_at(T0, T0 + lifetime, DEFAULT, r)
            assert T0 < at < T0 + lifetime, (lifetime, r, at)


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        (1, 0.5, 1),
        (2, 1, 2),
        (3, 2, 4),
        (5, 8, 16),
        (9, 128, 256),
        (10, 150, 300),
        (10**6, 150, 300),
    ],
)
def test_backoff_doubles_up_to_the_cap(failures: int, low: float, high: float) -> None:
    assert backoff_delay(failures, DEFAULT, 0.0) == pytest.approx(low)
    assert backoff_delay(failures, DEFAULT, 1.0) == pytest.approx(high)
    assert low <= backoff_delay(failures, DEFAULT, 0.37) <= high


def test_backoff_treats_zero_failures_like_the_first() -> None:
    assert backoff_delay(0, DEFAULT, 1.0) == backoff_delay(1, DEFAULT, 1.0) == 1.0


def test_backoff_follows_configured_bounds() -> None:
    quick = Policy(backoff_initial=0.2, backoff_max=2.0)
    assert [backoff_delay(n, quick, 1.0) for n in range(1, 7)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    )


def test_retry_is_backoff_while_far_from_expiry() -> None:
    assert retry_at(T0, 3, T0 + 1000, DEFAULT, 1.0) == T0 + 4


def test_retry_never_goes_past_the_expiry_of_written_credentials() -> None:
    assert retry_at(T0, 10, T0 + 30, DEFAULT, 0.5) == T0 + 30


def test_retry_after_expiry_or_without_credentials_is_plain_backoff() -> None:
    assert retry_at(T0, 10, T0 - 5, DEFAULT, 1.0) == T0 + 300
    assert retry_at(T0, 10, None, DEFAULT, 1.0) == T0 + 300
    assert retry_at(T0, 1, T0, DEFAULT, 1.0) == T0 + 1


def test_expiry_is_at_the_instant() -> None:
    assert not is_expired(T0 - 0.001, T0)
    assert is_expired(T0, T0)
    assert is_expired(T0 + 1, T0)
    assert is_expired(T0, None)


def test_no_skew_when_both_clocks_advance_together() -> None:
    a, b = ClockSample(T0, 100.0), ClockSample(T0 + 30, 130.0)
    assert clock_skew(a, b) == 0.0
    assert not clock_jumped(a, b)


def test_suspend_shows_as_wall_time_without_monotonic_time() -> None:
    before, after = ClockSample(T0, 100.0), ClockSample(T0 + 3600, 130.0)
    assert clock_skew(before, after) == 3570.0
    assert clock_jumped(before, after)


def test_backward_step_is_a_jump() -> None:
    before, after = ClockSample(T0, 100.0), ClockSample(T0 - 60, 130.0)
    assert clock_skew(before, after) == -90.0
    assert clock_jumped(before, after)


def test_small_jitter_is_within_tolerance() -> None:
    before, after = ClockSample(T0, 100.0), ClockSample(T0 + 34, 130.0)
    assert not clock_jumped(before, after)
    assert clock_jumped(before, after, tolerance=3.0)
