"""Answer a predict request: parse each input once, merge duplicates, ask the tiers.

Per-molecule problems (an unreadable SMILES) are values in the answer; request-level problems
(unknown endpoint, batch too large) are exceptions the routes turn into 4xx responses.
"""

from __future__ import annotations

import time
from typing import Any

from molserve.chem.molecules import InvalidSmiles, try_parse
from molserve.gateway.backends import ComputedBackend, FastBackend, MoleculeBatch
from molserve.registry.store import Registry


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class Predictor:
    def __init__(self, registry: Registry, *, max_batch: int = 1000) -> None:
        self.registry = registry
        self.max_batch = max_batch
        self.fast = FastBackend(registry)
        self.computed = ComputedBackend()
        self.loaded_at: float | None = None

    def load(self, only: list[str] | None = None) -> None:
        """Load the newest fast model of each endpoint (or of the endpoints in `only`)."""
        self.fast.load(only)
        self.loaded_at = time.time()

    @property
    def predicted_endpoints(self) -> list[str]:
        return self.fast.endpoints()

    @property
    def all_endpoints(self) -> list[str]:
        return self.predicted_endpoints + self.computed.endpoints()

    def endpoint_info(self) -> list[dict[str, Any]]:
        return [self.fast.info(e) for e in self.fast.endpoints()] + [
            self.computed.info(e) for e in self.computed.endpoints()
        ]

    def resolve_endpoints(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            return self.predicted_endpoints
        known = set(self.all_endpoints)
        unknown = [e for e in requested if e not in known]
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

    def predict(self, molecules: list[str], endpoints: list[str] | None) -> dict[str, Any]:
        started = time.perf_counter()
        self.check_size(len(molecules))
        names = self.resolve_endpoints(endpoints)
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
        batch = MoleculeBatch(canonical, mols)
        if canonical:
            for name in names:
                backend = self.fast if name in self.fast.models else self.computed
                answers = backend.predict(batch, name)
                for slot, answer in enumerate(answers):
                    for index in owners[slot]:
                        results[index]["predictions"][name] = answer
        n_errors = sum(1 for r in results if r["error"])
        return {
            "results": results,
            "endpoints": names,
            "n_molecules": len(molecules),
            "n_errors": n_errors,
            "n_unique": len(canonical),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }
