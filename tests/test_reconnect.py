"""ReconnectPolicy: how long the client waits between attempts, and when it gives up. Pure."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fastapi_busproxy.exceptions import ConfigurationError
from fastapi_busproxy.proxy.reconnect import ReconnectPolicy

ALMOST_ONE = math.nextafter(1.0, 0.0)  # the largest value random.random() can return


def test_defaults() -> None:
    policy = ReconnectPolicy()
    assert (policy.initial_delay, policy.max_delay, policy.multiplier) == (0.5, 30.0, 2.0)
    assert policy.jitter == 0.5
    assert policy.max_attempts is None


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        pytest.param(0, 1.0, id="attempt-0-as-first"),
        pytest.param(1, 1.0, id="first"),
        pytest.param(2, 3.0, id="second"),
        pytest.param(3, 9.0, id="third"),
        pytest.param(4, 27.0, id="fourth"),
        pytest.param(5, 50.0, id="capped"),
        pytest.param(50, 50.0, id="long-capped"),
    ],
)
def test_exponential_growth_capped_at_max_delay(attempt: int, expected: float) -> None:
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=50.0, multiplier=3.0, jitter=0.0)
    assert policy.delay(attempt, 0.5) == pytest.approx(expected)


def test_delays_never_decrease_and_never_exceed_max_delay() -> None:
    policy = ReconnectPolicy(initial_delay=0.1, max_delay=7.0, multiplier=1.7, jitter=0.0)
    delays = [policy.delay(n, 0.0) for n in range(1, 40)]
    assert delays == sorted(delays)
    assert max(delays) == 7.0
    assert delays[0] == pytest.approx(0.1)


@pytest.mark.parametrize("attempt", [1025, 10_000])
def test_delay_stays_capped_after_very_many_attempts(attempt: int) -> None:
    # max_attempts=None retries forever: ~1025 failures of 30 s each is under 9 hours of outage.
    policy = ReconnectPolicy()
    assert policy.delay(attempt, 0.0) == pytest.approx(30.0 * (1 - policy.jitter))
    assert policy.delay(attempt, ALMOST_ONE) == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("jitter", "low", "high"),
    [
        pytest.param(0.5, 4.0, 8.0, id="half"),
        pytest.param(1.0, 0.0, 8.0, id="full"),
        pytest.param(0.25, 6.0, 8.0, id="quarter"),
    ],
)
def test_jitter_window(jitter: float, low: float, high: float) -> None:
    # base delay of attempt 4: 1 * 2**3 = 8 s; the last `jitter` fraction of it is random.
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=100.0, multiplier=2.0, jitter=jitter)
    assert policy.delay(4, 0.0) == pytest.approx(low)
    assert policy.delay(4, ALMOST_ONE) == pytest.approx(high)
    assert policy.delay(4, ALMOST_ONE) <= high
    assert policy.delay(4, 0.5) == pytest.approx((low + high) / 2)
    for step in range(100):
        assert low <= policy.delay(4, step / 100) <= high


def test_jitter_applies_to_the_capped_delay() -> None:
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=10.0, multiplier=2.0, jitter=0.5)
    assert policy.delay(20, 0.0) == pytest.approx(5.0)
    assert policy.delay(20, ALMOST_ONE) == pytest.approx(10.0)


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_zero_jitter_is_deterministic(attempt: int) -> None:
    policy = ReconnectPolicy(initial_delay=0.5, max_delay=30.0, multiplier=2.0, jitter=0.0)
    expected = min(30.0, 0.5 * 2.0 ** (attempt - 1))
    assert {policy.delay(attempt, r) for r in (0.0, 0.3, 0.7, ALMOST_ONE)} == {expected}


def test_multiplier_one_is_a_constant_delay() -> None:
    policy = ReconnectPolicy(initial_delay=2.0, max_delay=30.0, multiplier=1.0, jitter=0.0)
    assert [policy.delay(n, 0.0) for n in (1, 2, 10, 100_000)] == [2.0] * 4


@pytest.mark.parametrize(
    ("max_attempts", "retried", "given_up"),
    [
        pytest.param(1, [], [1, 2], id="one"),
        pytest.param(3, [1, 2], [3, 4, 100], id="three"),
    ],
)
def test_should_retry_until_max_attempts_failures(
    max_attempts: int, retried: list[int], given_up: list[int]
) -> None:
    policy = ReconnectPolicy(max_attempts=max_attempts)
    assert [policy.should_retry(n) for n in retried] == [True] * len(retried)
    assert [policy.should_retry(n) for n in given_up] == [False] * len(given_up)


def test_no_max_attempts_retries_forever() -> None:
    policy = ReconnectPolicy(max_attempts=None)
    assert all(policy.should_retry(n) for n in (1, 2, 1000, 10**9))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"initial_delay": -0.1}, id="negative-initial"),
        pytest.param({"initial_delay": 5.0, "max_delay": 1.0}, id="max-below-initial"),
        pytest.param({"max_delay": -1.0, "initial_delay": 0.0}, id="negative-max"),
        pytest.param({"multiplier": 0.5}, id="shrinking-multiplier"),
        pytest.param({"multiplier": 0.0}, id="zero-multiplier"),
        pytest.param({"jitter": -0.01}, id="negative-jitter"),
        pytest.param({"jitter": 1.01}, id="jitter-above-one"),
        pytest.param({"max_attempts": 0}, id="zero-attempts"),
        pytest.param({"max_attempts": -3}, id="negative-attempts"),
    ],
)
def test_invalid_configuration_raises(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ReconnectPolicy(**kwargs)


@pytest.mark.parametrize("name", ["initial_delay", "max_delay", "multiplier"])
def test_nan_configuration_raises(name: str) -> None:
    with pytest.raises(ConfigurationError):
        ReconnectPolicy(**{name: math.nan})


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"initial_delay": 0.0, "max_delay": 0.0}, id="no-wait"),
        pytest.param({"initial_delay": 3.0, "max_delay": 3.0}, id="initial-equals-max"),
        pytest.param({"multiplier": 1.0}, id="multiplier-one"),
        pytest.param({"jitter": 0.0}, id="jitter-zero"),
        pytest.param({"jitter": 1.0}, id="jitter-one"),
        pytest.param({"max_attempts": 1}, id="one-attempt"),
    ],
)
def test_boundary_configurations_are_valid(kwargs: dict[str, Any]) -> None:
    policy = ReconnectPolicy(**kwargs)
    for name, value in kwargs.items():
        assert getattr(policy, name) == value


def test_no_wait_policy_waits_zero() -> None:
    policy = ReconnectPolicy(initial_delay=0.0, max_delay=0.0)
    assert policy.delay(1, 0.9) == 0.0
    assert policy.delay(7, 0.1) == 0.0


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="jitter"):
        ReconnectPolicy(jitter=2.0)


@pytest.mark.parametrize(
    ("status", "fatal"),
    [
        pytest.param(401, True, id="401"),
        pytest.param(403, True, id="403"),
        pytest.param(400, False, id="400"),
        pytest.param(404, False, id="404"),
        pytest.param(429, False, id="429"),
        pytest.param(500, False, id="500"),
        pytest.param(502, False, id="502"),
        pytest.param(503, False, id="503"),
        pytest.param(200, False, id="200"),
    ],
)
def test_is_fatal_status(status: int, fatal: bool) -> None:
    assert ReconnectPolicy.is_fatal_status(status) is fatal
    assert ReconnectPolicy().is_fatal_status(status) is fatal


@pytest.mark.parametrize("code", [1008, 4001, 4002])
def test_a_refusal_is_one_more_failed_attempt(code: int) -> None:
    assert ReconnectPolicy.next_attempt(3, code=code, served=True) == 4


def test_a_connection_that_served_starts_the_count_over() -> None:
    assert ReconnectPolicy.next_attempt(3, code=1006, served=True) == 1
    assert ReconnectPolicy.next_attempt(0, code=1012, served=True) == 1


def test_a_connection_that_carried_nothing_is_a_failed_attempt() -> None:
    assert ReconnectPolicy.next_attempt(3, code=1006, served=False) == 4
