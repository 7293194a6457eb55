"""The remote tier in process: breakers, picker, deadlines, batching, against httpx's
MockTransport and a fake clock (no sleeps on the breaker's clock, no sockets)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from molserve.prediction.batcher import DynamicBatcher
from molserve.prediction.remote import (
    CircuitBreaker,
    RemoteFailure,
    RemoteOptions,
    RemoteTier,
    RetryBudget,
    WorkerClient,
)

MODEL = {"endpoint": "logbb", "model_id": "logbb/transformer", "version": 1, "tier": "transformer",
         "task": "regression", "units": "u", "metrics": {"rmse": 0.1}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answers(smiles: list[str]) -> dict:
    return {"results": {"logbb": [{"value": 0.5, "units": "u", "kind": "predicted",
                                   "provenance": {"model_id": "logbb/transformer", "version": 1,
                                                  "tier": "transformer"}} for _ in smiles]}}


def run(coroutine):
    return asyncio.run(coroutine)


def open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    breaker.record_failure()
    assert breaker.state == "open"
    return breaker


@pytest.mark.parametrize("status", [503, 404])
def test_a_half_open_probe_answered_503_or_404_decides_the_breaker(status):
    """The worker answered, so it is up: the probe closes the breaker instead of leaving it
    half-open for ever."""
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 5.0
    assert breaker.state == "half_open"

    async def scenario():
        transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"error": "x"}))
        async with httpx.AsyncClient(transport=transport) as client:
            worker = WorkerClient("http://w", client, breaker, None)
            worker.models = {"logbb": MODEL}
            assert breaker.allow()  # the probe
            with pytest.raises(RemoteFailure):
                await worker.predict(["CCO"], "logbb", 1.0, None)

    run(scenario())
    assert breaker.state == "closed"


@pytest.mark.parametrize(("predict_status", "closes"), [(200, True), (500, False)])
def test_a_health_probe_that_predicts_closes_an_open_breaker(predict_status, closes):
    """While the breaker is open (its reset timeout not passed), the health probe also asks for
    one prediction: a worker that answers it is back; one that lists its models but fails to
    predict stays open."""
    clock = FakeClock()
    breaker = open_breaker(clock)

    probes = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=[MODEL])
        probes.append(request.headers.get("x-molserve-probe"))
        return httpx.Response(predict_status, json=answers(["C"]))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            worker = WorkerClient("http://w", client, breaker, None)
            await worker.refresh(1.0)

    run(scenario())
    assert breaker.state == ("closed" if closes else "open")
    assert probes == ["health"]  # marked, so the worker can tell it from a caller's call


def test_the_picker_takes_the_next_worker_when_one_cannot_take_a_call():
    """Worker a is half-open with its single probe already out: every pick goes to b."""
    clock = FakeClock()
    stuck = open_breaker(clock)
    clock.now = 5.0
    assert stuck.allow()  # the probe is out; no second call is allowed

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as c:
            tier = RemoteTier(RemoteOptions(urls=["http://a", "http://b"]), client=c, clock=clock)
            tier.workers[0].breaker = stuck
            for worker in tier.workers:
                worker.models = {"logbb": MODEL}
            return [tier._pick(tier._candidates("logbb"), set()) for _ in range(50)]

    picked = run(scenario())
    assert all(w is not None and w.url == "http://b" for w in picked)


def test_a_callers_short_deadline_never_opens_the_breaker_for_others():
    """Three requests with a 1 ms deadline against a healthy 150 ms worker: each of those callers
    is answered from the fast tier (deadline_exceeded), the worker is not blamed, and a caller
    with time gets the worker's answer."""

    async def handler(request: httpx.Request) -> httpx.Response:
        import json

        if request.method == "GET":
            return httpx.Response(200, json=[MODEL])
        await asyncio.sleep(0.15)
        return httpx.Response(200, json=answers(json.loads(request.content)["molecules"]))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            tier = RemoteTier(RemoteOptions(urls=["http://w"], timeout_s=2.0, failure_threshold=3,
                                             max_wait_s=0.0), client=client)
            await tier.refresh()
            reasons = []
            for _ in range(3):
                try:
                    await tier.predict("logbb", ["CCO"], timeout_s=0.001)
                except RemoteFailure as failure:
                    reasons.append(failure.reason)
            await asyncio.sleep(0.3)  # the abandoned calls finish (or were never sent)
            state = tier.workers[0].breaker.state
            answered = await tier.predict("logbb", ["CCO", "CCN"], timeout_s=2.0)
            await tier.stop()
            return reasons, state, answered

    reasons, state, answered = run(scenario())
    assert reasons == ["deadline_exceeded"] * 3
    assert state == "closed"
    assert [a.value for a in answered] == [0.5, 0.5]


def test_httpx_errors_other_than_timeouts_and_transport_become_a_worker_error():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.DecodingError("corrupt gzip stream", request=request)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            worker = WorkerClient("http://w", client, CircuitBreaker(failure_threshold=1), None)
            with pytest.raises(RemoteFailure) as raised:
                await worker.predict(["CCO"], "logbb", 1.0, None)
            return raised.value, worker.breaker.state

    failure, state = run(scenario())
    assert failure.reason == "worker_error" and "DecodingError" in failure.detail
    assert state == "open"  # the worker's own fault counts against it


def test_batches_go_out_concurrently_and_abandoned_molecules_are_not_sent():
    sent: list[list[str]] = []
    in_flight = {"now": 0, "most": 0}

    async def call(batch: list[str]) -> list[str]:
        sent.append(batch)
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        await asyncio.sleep(0.05)
        in_flight["now"] -= 1
        return [s.lower() for s in batch]

    async def scenario():
        batcher = DynamicBatcher(call, max_batch=1, max_wait_s=0.0, max_in_flight=4)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([s]) for s in ("A", "B", "C")))
        # A caller that gives up before its molecule is sent: the molecule is dropped.
        blocker = DynamicBatcher(call, max_batch=1, max_wait_s=0.0, max_in_flight=1)
        blocker.start()
        first = asyncio.create_task(blocker.submit(["X"]))
        await asyncio.sleep(0.01)  # X is in flight; Y waits behind it
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(blocker.submit(["Y"]), timeout=0.01)
        await first
        await asyncio.sleep(0.1)
        await batcher.stop()
        await blocker.stop()
        return results

    results = run(scenario())
    assert results == [["a"], ["b"], ["c"]]
    assert in_flight["most"] >= 2  # not one call at a time
    assert ["Y"] not in sent and ["X"] in sent


def test_a_worker_that_answers_503_is_left_alone_for_its_retry_after():
    """Worker a sheds load (503, Retry-After: 3): the call is retried on b, and for three seconds
    of the tier's clock no call goes to a; then a is asked again. With a single busy worker, the
    tier answers worker_overloaded at once, without calling it."""
    clock = FakeClock()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        calls.append(request.url.host)
        if request.url.host == "a":
            return httpx.Response(503, json={"error": "overloaded"}, headers={"Retry-After": "3"})
        return httpx.Response(200, json=answers(json.loads(request.content)["molecules"]))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            tier = RemoteTier(RemoteOptions(urls=["http://a", "http://b"], max_wait_s=0.0),
                              client=client, clock=clock)
            for worker in tier.workers:
                worker.models = {"logbb": MODEL}
            tier.workers[1].in_flight = 100  # the picker prefers a while a may take calls
            first = await tier._call("logbb", ["CCO"], [None])
            during = [tier._pick(tier._candidates("logbb"), set()).url for _ in range(20)]
            clock.now = 3.5
            after = tier._pick(tier._candidates("logbb"), set()).url
            alone = RemoteTier(RemoteOptions(urls=["http://a"]), client=client, clock=clock)
            alone.workers[0].models = {"logbb": MODEL}
            calls.clear()
            with pytest.raises(RemoteFailure):
                await alone._call("logbb", ["CCO"], [None])
            with pytest.raises(RemoteFailure) as raised:
                await alone.predict("logbb", ["CCO"], timeout_s=1.0)
            await alone.stop()
            return first, during, after, raised.value.reason, list(calls)

    first, during, after, reason, alone_calls = run(scenario())
    assert len(first) == 1  # retried on b and answered
    assert during == ["http://b"] * 20 and after == "http://a"
    assert reason == "worker_overloaded" and alone_calls == ["a"]  # one 503, then not called


def test_the_retry_budget_remembers_one_window_of_calls_on_a_healthy_system():
    """No call fails, so nothing is retried: the budget's memory must not grow with every call."""
    clock = FakeClock()
    budget = RetryBudget(window_s=10.0, clock=clock)
    for _ in range(100_000):
        clock.now += 0.001  # a thousand calls a second for 100 s
        budget.record_call()
    assert len(budget.calls) <= 10_001
    # The window still counts: retries are allowed in proportion to its calls.
    assert budget.try_spend()
