"""Prometheus metrics of the gateway (one registry per app, so tests can run several apps)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The endpoints private to a key (set by the app): their series are labelled `private`,
        # since the metrics are open to any caller that reaches them and a private endpoint's
        # name is its owner's.
        self.private: Callable[[], Collection[str]] = frozenset
        self.requests = Counter(
            "molserve_requests_total", "HTTP requests by route and status.",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "molserve_request_seconds", "Request latency by route.", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tier_latency = Histogram(
            "molserve_tier_seconds",
            "Time a tier took to answer one request's molecules for one endpoint (transformer: "
            "successful answers only; failures are counted as degraded answers).",
            ["endpoint", "tier"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter(
            "molserve_predictions_total", "Per-molecule answers by endpoint and tier.",
            ["endpoint", "tier"], registry=self.registry)
        self.invalid_molecules = Counter(
            "molserve_invalid_molecules_total", "Inputs that could not be parsed.",
            registry=self.registry)
        self.degraded = Counter(
            "molserve_degraded_answers_total", "Answers from a fallback tier, by reason.",
            ["endpoint", "reason"], registry=self.registry)
        self.models_loaded = Gauge(
            "molserve_models_loaded", "Fast-tier models loaded.", registry=self.registry)
        self.model_load_seconds = Gauge(
            "molserve_model_load_seconds", "Time to load and verify a model.", ["endpoint"],
            registry=self.registry)
        self.breaker_state = Gauge(
            "molserve_worker_breaker_state", "Breaker per worker: 0 closed, 1 half-open, 2 open.",
            ["worker"], registry=self.registry)
        self.jobs_submitted = Counter(
            "molserve_jobs_submitted_total", "Jobs submitted by kind.", ["kind"], registry=self.registry)
        self.jobs = Gauge("molserve_jobs", "Jobs by state.", ["state"], registry=self.registry)
        self.remote_queue = Gauge("molserve_remote_queue_molecules",
                                  "Molecules waiting for the transformer tier, per endpoint.",
                                  ["endpoint"], registry=self.registry)
        self.batch_size = Histogram(
            "molserve_batch_molecules", "Molecules per predict request.",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000), registry=self.registry)

    def endpoint(self, name: str) -> str:
        """The label an endpoint's series carry: its name, or `private`."""
        return "private" if name in self.private() else name
