"""Webhook retries: backoff_s * 2**(failures - 1), capped at backoff_max_s, then dead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubemeter_operator.notifications.delivery import RetryPolicy

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_the_wait_doubles_from_backoff_s_and_stops_at_backoff_max_s() -> None:
    policy = RetryPolicy(backoff_s=5, backoff_max_s=600, max_attempts=100)
    waits = [policy.delay(n).total_seconds() for n in range(1, 10)]
    assert waits == [5, 10, 20, 40, 80, 160, 320, 600, 600]


def test_the_defaults_give_up_after_eight_attempts_about_ten_minutes_in() -> None:
    policy = RetryPolicy()
    at, schedule = NOW, []
    for attempts in range(1, 9):
        nxt = policy.next_attempt(attempts, at)
        schedule.append(nxt)
        if nxt is not None:
            at = nxt
    assert schedule[-1] is None  # the 8th failed attempt dead-letters
    assert all(s is not None for s in schedule[:-1])
    assert at - NOW == timedelta(seconds=5 + 10 + 20 + 40 + 80 + 160 + 320)


def test_one_attempt_allowed_means_no_retry() -> None:
    assert RetryPolicy(max_attempts=1).next_attempt(1, NOW) is None


def test_huge_failure_counts_do_not_overflow() -> None:
    assert RetryPolicy(backoff_max_s=600).delay(10_000) == timedelta(seconds=600)


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_s": 0}, {"backoff_s": 0}, {"backoff_max_s": -1}, {"max_attempts": 0}],
)
def test_a_policy_that_cannot_work_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_delay_needs_a_failure() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay(0)
