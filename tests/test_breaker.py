"""The circuit breaker's state machine and the retry budget, on a fake clock."""

from molserve.prediction.remote import CircuitBreaker, RetryBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_recovers_through_half_open():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5, half_open_probes=1, clock=clock)
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 4.9
    assert breaker.state == "open"
    clock.now = 5.0
    assert breaker.state == "half_open"
    assert breaker.allow()  # one probe
    assert not breaker.allow()  # no second probe while the first is out
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_a_failed_probe_reopens_for_a_full_timeout():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=2, clock=clock)
    breaker.record_failure()
    clock.now = 2.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now = 3.9
    assert breaker.state == "open"
    clock.now = 4.0
    assert breaker.state == "half_open"


def test_a_success_resets_the_failure_count():
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_retry_budget_caps_retries_at_a_fraction_of_calls():
    budget = RetryBudget(ratio=0.1, floor=2)
    for _ in range(100):
        budget.record_call()
    granted = sum(budget.try_spend() for _ in range(50))
    assert granted == 12  # floor 2 + 10% of 100
