"""The remote worker tiers (transformer, graph): workers reached over HTTP behind the tiers' protocol, with
pooled async clients, a circuit breaker per worker, load balancing, batching of concurrent
requests with several calls in flight, a retry budget and background health probes.

Each molecule travels with its caller's deadline and request id; a caller's deadline bounds
that caller's wait only, never the worker's own time budget. Nothing here raises into a
request: a call either returns answers or a `RemoteFailure` with a reason the router puts on
its degraded answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from molserve.answers import Answer
from molserve.config import RemoteSettings
from molserve.prediction.batcher import DynamicBatcher, Overloaded
from molserve.processes import cancel_and_wait

log = logging.getLogger("molserve.prediction.remote")

PROBE_HEADER = "x-molserve-probe"  # marks the health probe's prediction (workers may discount it)


class RemoteFailure(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CircuitBreaker:
    """closed -> open after `failure_threshold` consecutive failures; open -> half-open after
    `reset_timeout_s`; half-open lets `half_open_probes` calls through: a success closes it, a
    failure opens it again. The clock is injectable for tests."""

    def __init__(self, failure_threshold: int = 3, reset_timeout_s: float = 5.0,
                 half_open_probes: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_probes = half_open_probes
        self.clock = clock
        self._state = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self.transitions = 0

    @property
    def state(self) -> str:
        if self._state == "open" and self.clock() - self._opened_at >= self.reset_timeout_s:
            self._set("half_open")
            self._probes = 0
        return self._state

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.transitions += 1

    def allow(self) -> bool:
        """May a call go through now? (In half-open, counts the probe.)"""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probes < self.half_open_probes:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        """The worker answered well (or its health probe did): closed, whatever the state."""
        self._failures = 0
        self._set("closed")

    def record_alive(self) -> None:
        """The worker answered but could not serve this call (overloaded, or no model for the
        endpoint): not a fault of the worker. A half-open probe answered so is decided: the
        worker is up, so the breaker closes."""
        if self._state == "half_open":
            self.record_success()

    def record_failure(self) -> None:
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._set("open")
            self._opened_at = self.clock()
            self._failures = 0


def _seconds(retry_after: str | None, default: float = 1.0, cap: float = 30.0) -> float:
    """A Retry-After in seconds (the HTTP-date form is not used by workers): default if absent."""
    try:
        return min(cap, max(0.0, float(retry_after))) if retry_after else default
    except ValueError:
        return default


class RetryBudget:
    """Retries may be at most `ratio` of recent calls (plus a small floor), so a failing tier
    is not hit with twice the traffic."""

    def __init__(self, ratio: float = 0.1, floor: int = 3, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio, self.floor, self.window_s = ratio, floor, window_s
        self.clock = clock
        self.calls: deque[float] = deque()
        self.retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for queue in (self.calls, self.retries):
            while queue and now - queue[0] > self.window_s:
                queue.popleft()

    def record_call(self) -> None:
        # Trimmed here too: on a healthy system no retry ever trims, and the window is all
        # that is needed (memory stays bounded by the calls of one window).
        now = self.clock()
        self._trim(now)
        self.calls.append(now)

    def try_spend(self) -> bool:
        now = self.clock()
        self._trim(now)
        if len(self.retries) < self.floor + self.ratio * len(self.calls):
            self.retries.append(now)
            return True
        return False


@dataclass
class WorkerStats:
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    outcomes: deque = field(default_factory=lambda: deque(maxlen=200))  # True = success

    def record(self, ok: bool, latency_ms: float | None) -> None:
        self.outcomes.append(ok)
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "recent_calls": len(self.outcomes),
            "error_rate": round(1 - sum(self.outcomes) / len(self.outcomes), 4) if self.outcomes else 0.0,
            "latency_p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
            "latency_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
        }


class WorkerClient:
    def __init__(self, url: str, client: httpx.AsyncClient, breaker: CircuitBreaker,
                 token: str | None, tier: str = "transformer") -> None:
        self.url = url.rstrip("/")
        self.tier = tier  # which of the worker's model kinds this client asks for
        self.client = client
        self.breaker = breaker
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.models: dict[str, dict] = {}  # endpoint -> model info (with held-out metrics)
        self.reachable = False
        self.in_flight = 0
        self.stats = WorkerStats()
        self.last_error: str | None = None
        self.busy_until = 0.0  # a 503's Retry-After: no calls before then (breaker clock)

    def busy(self) -> bool:
        return self.breaker.clock() < self.busy_until

    async def refresh(self, timeout_s: float) -> None:
        """Health probe: what does the worker serve? While its breaker is not closed, the probe
        is also a real one-molecule prediction, and an answer closes the breaker: a listing
        proves the process is up, not that it predicts."""
        try:
            response = await self.client.get(f"{self.url}/v1/models", headers=self.headers,
                                              timeout=timeout_s)
            response.raise_for_status()
            listing = response.json()
            self.models = {m["endpoint"]: m for m in listing
                           if m.get("tier", "transformer") == self.tier}
            self.reachable = True
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            self.reachable = False
            self.last_error = f"health probe: {type(error).__name__}"
            return
        if self.breaker.state != "closed" and self.models:
            endpoint = sorted(self.models)[0]
            try:
                response = await self.client.post(
                    f"{self.url}/v1/predict", json=self._body(["C"], endpoint),
                    headers={**self.headers, PROBE_HEADER: "health"}, timeout=timeout_s)
                answers = response.json()["results"][endpoint] if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                answers = None
            if isinstance(answers, list) and len(answers) == 1:
                self.breaker.record_success()

    async def predict(self, smiles: list[str], endpoint: str, timeout_s: float,
                      request_id: str | None) -> list[Answer]:
        started = time.perf_counter()
        self.in_flight += 1
        try:
            headers = dict(self.headers)
            if request_id:
                headers["x-request-id"] = request_id
            response = await self.client.post(
                f"{self.url}/v1/predict", json=self._body(smiles, endpoint),
                headers=headers, timeout=timeout_s)
        except httpx.TimeoutException as error:
            self._fail(f"timeout after {timeout_s:.2f} s")
            raise RemoteFailure("deadline_exceeded", str(error) or "timeout") from None
        except httpx.TransportError as error:
            self._fail(type(error).__name__)
            self.reachable = False
            raise RemoteFailure("worker_unreachable", type(error).__name__) from None
        except httpx.HTTPError as error:  # anything else httpx raises: the worker's answer was bad
            self._fail(type(error).__name__)
            raise RemoteFailure("worker_error", f"{type(error).__name__}: {error}") from None
        finally:
            self.in_flight -= 1
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code == 503:
            # Saturated, not broken: no breaker failure, but tell the caller.
            self.stats.record(False, latency_ms)
            self.breaker.record_alive()
            retry_after = _seconds(response.headers.get("retry-after"))
            self.busy_until = self.breaker.clock() + retry_after
            raise RemoteFailure("worker_overloaded", f"{self.url} busy for {retry_after:g} s")
        if response.status_code == 404:
            self.stats.record(False, latency_ms)
            self.breaker.record_alive()
            self.models.pop(endpoint, None)
            raise RemoteFailure(f"no_{self.tier}_model", f"{self.url} does not serve {endpoint}")
        if response.status_code != 200:
            self._fail(f"HTTP {response.status_code}")
            raise RemoteFailure("worker_error", f"HTTP {response.status_code}")
        try:
            listed = response.json()["results"][endpoint]
            if not isinstance(listed, list) or len(listed) != len(smiles):
                raise ValueError("wrong number of answers")
            answers = [Answer.from_json(answer) for answer in listed]
        except (ValueError, KeyError, TypeError) as error:
            self._fail(f"invalid response: {error}")
            raise RemoteFailure("worker_error", f"invalid response: {error}") from None
        self.breaker.record_success()
        self.stats.record(True, latency_ms)
        self.reachable = True
        return answers

    def _body(self, smiles: list[str], endpoint: str) -> dict[str, Any]:
        body: dict[str, Any] = {"molecules": smiles, "endpoints": [endpoint]}
        if self.tier != "transformer":  # the field workers have always assumed
            body["tier"] = self.tier
        return body

    def _fail(self, detail: str) -> None:
        self.breaker.record_failure()
        self.stats.record(False, None)
        self.last_error = detail

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "breaker": self.breaker.state, "reachable": self.reachable,
                "in_flight": self.in_flight, "busy": self.busy(), "models": sorted(self.models),
                "last_error": self.last_error, **self.stats.summary()}


@dataclass
class RemoteOptions:
    """The remote tier's running parameters, in seconds (`from_settings` reads the gateway's
    configured section)."""

    urls: list[str]
    token: str | None = None
    timeout_s: float = 2.0
    failure_threshold: int = 3
    reset_timeout_s: float = 5.0
    health_interval_s: float = 2.0
    max_batch: int = 64
    max_wait_s: float = 0.002
    max_queue: int = 4096
    retry_ratio: float = 0.1

    @classmethod
    def from_settings(cls, settings: RemoteSettings) -> RemoteOptions:
        return cls(urls=list(settings.worker_urls), token=settings.worker_token,
                   timeout_s=settings.worker_timeout_ms / 1000,
                   failure_threshold=settings.breaker_failures,
                   reset_timeout_s=settings.breaker_reset_s,
                   health_interval_s=settings.health_interval_s,
                   max_batch=settings.remote_max_batch,
                   max_wait_s=settings.remote_max_wait_ms / 1000,
                   max_queue=settings.remote_max_queue)


class RemoteTier:
    """One worker tier (transformer or graph) across every configured worker. Each tier keeps
    its own breakers and batchers: a worker whose graph models fail is not thereby cut off for
    its transformers."""

    def __init__(self, settings: RemoteOptions, *, client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic, name: str = "transformer") -> None:
        self.name = name
        self.settings = settings
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.client = client or httpx.AsyncClient(limits=limits, timeout=settings.timeout_s)
        self.workers = [
            WorkerClient(url, self.client,
                         CircuitBreaker(settings.failure_threshold, settings.reset_timeout_s,
                                        clock=clock),
                         settings.token, tier=name)
            for url in settings.urls
        ]
        self.budget = RetryBudget(settings.retry_ratio)
        self.batchers: dict[str, DynamicBatcher] = {}
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.refresh()
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._health_task)
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.client.aclose()

    async def refresh(self) -> None:
        await asyncio.gather(*(w.refresh(min(1.0, self.settings.timeout_s)) for w in self.workers))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.refresh()

    def endpoints(self) -> list[str]:
        return sorted(self.served_endpoints())

    def served(self) -> set[str]:
        return set(self.served_endpoints())

    def served_endpoints(self) -> dict[str, dict]:
        """endpoint -> model info, from any worker that lists it."""
        served: dict[str, dict] = {}
        for worker in self.workers:
            for endpoint, info in worker.models.items():
                served.setdefault(endpoint, info)
        return served

    def _candidates(self, endpoint: str) -> list[WorkerClient]:
        return [w for w in self.workers if endpoint in w.models]

    def _pick(self, candidates: list[WorkerClient], exclude: set[str]) -> WorkerClient | None:
        """A worker that may take a call now, or None when none may.

        Power of two choices on in-flight calls spreads load and avoids a slow worker; when the
        preferred worker cannot take the call (open, or half-open with its probe out), the next
        one is asked instead of giving up. A worker that answered 503 is left alone for its
        Retry-After."""
        allowed = [w for w in candidates if w.url not in exclude and w.breaker.state != "open"
                   and not w.busy()]
        if not allowed:
            return None
        pair = random.sample(allowed, min(2, len(allowed)))
        preferred = sorted(pair, key=lambda w: w.in_flight)
        rest = sorted((w for w in allowed if w not in pair), key=lambda w: w.in_flight)
        for worker in preferred + rest:
            if worker.breaker.allow():
                return worker
        return None

    def availability(self, endpoint: str) -> str | None:
        """None when some worker can take `endpoint` now, else the reason it cannot."""
        candidates = self._candidates(endpoint)
        if not candidates:
            return f"no_{self.name}_model" if any(w.reachable for w in self.workers) \
                or not self.workers else "worker_unreachable"
        if all(w.breaker.state == "open" for w in candidates):
            return "circuit_open"
        if all(w.breaker.state == "open" or w.busy() for w in candidates):
            return "worker_overloaded"
        return None

    async def _call(self, endpoint: str, smiles: list[str], request_ids: list[str | None]) -> list[Answer]:
        """One batched worker call, with at most one retry on another worker within budget."""
        # A batch may mix requests; the worker receives the ids of those it serves.
        ids = ",".join(sorted({i for i in request_ids if i}))[:512] or None
        # The worker's own time budget, never a caller's deadline: a caller in a hurry stops
        # waiting (and is answered by the fast tier), but does not make the worker look broken.
        timeout_s = self.settings.timeout_s
        tried: set[str] = set()
        self.budget.record_call()
        last: RemoteFailure | None = None
        for attempt in range(2):
            worker = self._pick(self._candidates(endpoint), tried)
            if worker is None:
                raise last or RemoteFailure(self.availability(endpoint) or "circuit_open")
            tried.add(worker.url)
            try:
                return await worker.predict(smiles, endpoint, timeout_s, ids)
            except RemoteFailure as failure:
                last = failure
                retryable = failure.reason in ("worker_unreachable", "worker_error", "worker_overloaded")
                if attempt == 0 and retryable and self.budget.try_spend():
                    continue
                raise
        raise last or RemoteFailure("worker_error")

    async def answer(self, batch, endpoint: str, deadline: float,
                     request_id: str | None = None) -> list[Answer]:
        """The tiers' protocol: answers for the batch's molecules, by `deadline` (monotonic)."""
        return await self.predict(endpoint, batch.canonical_smiles,
                                  max(0.0, deadline - time.monotonic()), request_id)

    async def predict(self, endpoint: str, smiles: list[str], timeout_s: float,
                      request_id: str | None = None) -> list[Answer]:
        """Answers for `smiles` from this tier within `timeout_s`, or RemoteFailure."""
        reason = self.availability(endpoint)
        if reason:
            raise RemoteFailure(reason)
        batcher = self.batchers.get(endpoint)
        if batcher is None:
            async def call(batch: list[str], ids: list, _endpoint: str = endpoint) -> list[Answer]:
                return await self._call(_endpoint, batch, ids)

            # Several calls in flight (up to two per worker), so balancing has a choice.
            batcher = DynamicBatcher(call, max_batch=self.settings.max_batch,
                                     max_wait_s=self.settings.max_wait_s,
                                     max_queue=self.settings.max_queue,
                                     max_in_flight=max(2, 2 * len(self.workers)), with_tags=True)
            batcher.start()
            self.batchers[endpoint] = batcher
        try:
            return await asyncio.wait_for(batcher.submit(smiles, tag=request_id), timeout=timeout_s)
        except Overloaded as error:
            raise RemoteFailure("worker_overloaded", str(error)) from None
        except TimeoutError:
            raise RemoteFailure("deadline_exceeded", f"no answer within {timeout_s * 1000:.0f} ms") from None

    def status(self) -> list[dict[str, Any]]:
        return [{**w.status(), "queue": {e: b.waiting for e, b in self.batchers.items()}}
                for w in self.workers]
