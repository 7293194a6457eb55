"""Answer a predict request with the in-process tiers: parse each input once, merge
duplicates, ask the fast tier and computed properties. Used by the gateway (which adds the
remote transformer tier on top), the batch command and screening jobs.

Per-molecule problems (an unreadable SMILES) are values in the answer; request-level problems
(unknown endpoint, batch too large) are exceptions (`RequestError`) that servers turn into 4xx
responses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from molserve.chem.molecules import InvalidSmiles, try_parse
from molserve.registry.store import Registry
from molserve.tiers.backends import ComputedBackend, FastBackend, MoleculeBatch


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class LocalPredictor:
    """The fast tier and computed properties, in this process."""

    def __init__(self, registry: Registry, *, max_batch: int = 1000) -> None:
        self.registry = registry
        self.max_batch = max_batch
        self.fast = FastBackend(registry)
        self.computed = ComputedBackend()
        self.loaded_at: float | None = None
        # (endpoint, tier, seconds) of each tier's answer to one request; a server points this
        # at its latency histogram.
        self.observe_tier: Callable[[str, str, float], None] = lambda *_: None
        # Endpoints a running bootstrap has not trained yet: name -> {state, progress, step}.
        self.pending: Callable[[], dict[str, dict]] = dict

    def load(self, only: list[str] | None = None) -> None:
        """Load the newest fast model of each endpoint (or of the endpoints in `only`)."""
        self.fast.load(only)
        self.loaded_at = time.time()

    @property
    def predicted_endpoints(self) -> list[str]:
        return self.fast.endpoints()

    @property
    def remote_endpoints(self) -> list[str]:
        """Endpoints served by tiers outside this process (none here; the gateway adds them)."""
        return []

    @property
    def all_endpoints(self) -> list[str]:
        predicted = sorted(set(self.predicted_endpoints) | set(self.remote_endpoints))
        return predicted + self.computed.endpoints()

    def resolve_endpoints(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            return sorted(set(self.predicted_endpoints) | set(self.remote_endpoints))
        known = set(self.all_endpoints)
        unknown = [e for e in requested if e not in known]
        pending = self.pending()
        training = {e: pending[e] for e in unknown if e in pending}
        if training:
            shown = ", ".join(f"{e} ({p.get('state')}, {p.get('progress', 0) * 100:.0f}%)"
                              for e, p in training.items())
            raise RequestError(
                503, "endpoint_training",
                f"still being trained at start-up: {shown}; retry in a few minutes "
                "(GET /readyz shows progress)",
                {"training": training, "retry_after_s": 30.0})
        if unknown:
            raise RequestError(
                422, "unknown_endpoint",
                f"unknown endpoint(s): {', '.join(map(repr, unknown))}; "
                f"GET /v1/endpoints lists the {len(known)} available",
                {"unknown": unknown, "available": sorted(known)},
            )
        if not requested:
            raise RequestError(422, "no_endpoints", "endpoints is empty; name at least one")
        return list(dict.fromkeys(requested))

    def check_size(self, n: int) -> None:
        if n > self.max_batch:
            raise RequestError(
                413, "batch_too_large",
                f"{n} molecules in one request; the limit is {self.max_batch}. Split the batch, "
                "or submit a screen job for large files",
                {"limit": self.max_batch, "received": n},
            )

    def _parse(self, molecules: list[str]):
        results: list[dict[str, Any]] = []
        slot_of: dict[str, int] = {}
        canonical: list[str] = []
        mols = []
        owners: list[list[int]] = []
        for index, text in enumerate(molecules):
            parsed = try_parse(text)
            if isinstance(parsed, InvalidSmiles):
                results.append({"index": index, "input": text, "canonical_smiles": None,
                                "error": parsed.reason, "predictions": {}})
                continue
            key = parsed.canonical_smiles
            results.append({"index": index, "input": text, "canonical_smiles": key,
                            "error": None, "predictions": {}})
            if key not in slot_of:
                slot_of[key] = len(canonical)
                canonical.append(key)
                mols.append(parsed.mol)
                owners.append([])
            owners[slot_of[key]].append(index)
        return results, MoleculeBatch(canonical, mols), owners

    def _local_answers(self, batch: MoleculeBatch, names: list[str]) -> dict[str, list[dict]]:
        answers: dict[str, list[dict]] = {}
        for name in names:
            started = time.perf_counter()
            if name in self.fast.models:
                answers[name] = self.fast.predict(batch, name)
                self.observe_tier(name, "fast", time.perf_counter() - started)
            elif name in self.computed.endpoints():
                answers[name] = self.computed.predict(batch, name)
                self.observe_tier(name, "computed", time.perf_counter() - started)
        return answers

    @staticmethod
    def _assemble(results, owners, answers: dict[str, list[dict]], names, started, n, batch):
        for name in names:
            for slot, answer in enumerate(answers.get(name, [])):
                for index in owners[slot]:
                    results[index]["predictions"][name] = answer
        return {
            "results": results,
            "endpoints": names,
            "n_molecules": n,
            "n_errors": sum(1 for r in results if r["error"]),
            "n_unique": len(batch.canonical_smiles),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    def predict(self, molecules: list[str], endpoints: list[str] | None) -> dict[str, Any]:
        """In-process tiers only (fast and computed): the offline path."""
        started = time.perf_counter()
        self.check_size(len(molecules))
        names = self.resolve_endpoints(endpoints)
        results, batch, owners = self._parse(molecules)
        answers = self._local_answers(batch, names) if batch.canonical_smiles else {}
        return self._assemble(results, owners, answers, names, started, len(molecules), batch)
