"""The gateway's predictor: the in-process tiers plus the remote transformer tier, with
per-endpoint routing, hedging and degradation when the transformer tier cannot answer."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from molserve.registry.store import Registry
from molserve.tiers.predictor import LocalPredictor, RequestError

if TYPE_CHECKING:  # the remote tier (httpx) is imported only where workers are configured
    from molserve.gateway.remote import RemoteTier

__all__ = ["Predictor", "RequestError"]


class Predictor(LocalPredictor):
    def __init__(self, registry: Registry, *, max_batch: int = 1000, compute_threads: int = 2) -> None:
        super().__init__(registry, max_batch=max_batch)
        self.remote: RemoteTier | None = None
        # CPU work of large batches runs here: as many threads as cores, not one per request,
        # so concurrent batches queue instead of thrashing (and memory stays bounded).
        from concurrent.futures import ThreadPoolExecutor

        self.compute = ThreadPoolExecutor(max_workers=compute_threads, thread_name_prefix="predict")

    @property
    def remote_endpoints(self) -> list[str]:
        return sorted(self.remote.served_endpoints()) if self.remote else []

    def endpoint_info(self) -> list[dict[str, Any]]:
        served = self.remote.served_endpoints() if self.remote else {}
        infos = []
        for name in sorted(set(self.fast.endpoints()) | set(served)):
            info = self.fast.info(name) if name in self.fast.models else {
                "name": name, "kind": "predicted", "task": served[name].get("task", ""),
                "units": served[name].get("units", ""), "description": "", "tiers": [], "models": []}
            if name in served:
                info["tiers"] = [*info["tiers"], "transformer"]
                info["models"] = [*info["models"], served[name]]
                info["preferred_tier"] = self.preferred_tier(name)
            infos.append(info)
        infos += self.pending_info()
        return infos + [self.computed.info(e) for e in self.computed.endpoints()]

    def pending_info(self) -> list[dict[str, Any]]:
        """Bundled endpoints a start-up bootstrap is still training, with their progress."""
        pending = self.pending()
        if not pending:
            return []
        from molserve.operations.bootstrap import bundled_endpoints

        catalog = bundled_endpoints()
        infos = []
        for name, entry in pending.items():
            if name in self.fast.models or name not in catalog:
                continue
            bundled = catalog[name]
            infos.append({
                "name": name, "kind": "predicted", "task": bundled.task, "units": bundled.units,
                "description": bundled.description, "status": entry.get("state", "queued"),
                "progress": entry.get("progress", 0.0), "source": bundled.source,
                "tdc_dataset": bundled.tdc_name, "tiers": [], "models": []})
        return infos

    def preferred_tier(self, endpoint: str) -> str:
        """The tier whose model scored better on its held-out test split (same split for both)."""
        served = self.remote.served_endpoints() if self.remote else {}
        if endpoint not in served:
            return "fast"
        if endpoint not in self.fast.models:
            return "transformer"
        fast_test = self.fast.models[endpoint].manifest["metrics"]["test"]
        remote_test = served[endpoint].get("metrics") or {}
        if "rmse" in fast_test and "rmse" in remote_test:
            return "transformer" if remote_test["rmse"] < fast_test["rmse"] else "fast"
        if "roc_auc" in fast_test and "roc_auc" in remote_test:
            return "transformer" if remote_test["roc_auc"] > fast_test["roc_auc"] else "fast"
        return "fast"

    async def _remote_timed(self, name: str, smiles: list[str], timeout_s: float) -> list[dict]:
        started = time.perf_counter()
        answers = await self.remote.predict(name, smiles, timeout_s)
        self.observe_tier(name, "transformer", time.perf_counter() - started)
        return answers

    def plan(self, names: list[str], tier: str) -> dict[str, str]:
        """endpoint -> the tier to try first ('fast', 'transformer' or 'computed')."""
        plan = {}
        for name in names:
            if name in self.computed.endpoints():
                plan[name] = "computed"
            elif tier == "fast":
                plan[name] = "fast"
            elif tier == "transformer":
                plan[name] = "transformer"
            else:
                plan[name] = self.preferred_tier(name)
        return plan

    async def predict_routed(self, molecules: list[str], endpoints: list[str] | None, *,
                             tier: str = "auto", deadline_ms: float | None = None,
                             inline_limit: int = 16, on_degraded=None) -> dict[str, Any]:
        """Route each endpoint to its preferred tier; fall back to the fast tier, labelled
        degraded with the reason, whenever the transformer tier cannot answer in time."""
        from molserve.gateway.remote import RemoteFailure

        started = time.perf_counter()
        self.check_size(len(molecules))
        names = self.resolve_endpoints(endpoints)
        plan = self.plan(names, tier)
        results, batch, owners = self._parse(molecules)
        if not batch.canonical_smiles:
            return self._assemble(results, owners, {}, names, started, len(molecules), batch)
        timeout_s = (deadline_ms / 1000) if deadline_ms else (
            self.remote.settings.timeout_s if self.remote else 1.0)
        remote_tasks: dict[str, asyncio.Task] = {}
        reasons: dict[str, str] = {}
        for name, first in plan.items():
            if first != "transformer":
                continue
            if self.remote is None:
                reasons[name] = "no_transformer_model"
                continue
            # Sent first, so the worker computes while the fast tier answers here (hedging).
            remote_tasks[name] = asyncio.create_task(
                self._remote_timed(name, batch.canonical_smiles, timeout_s))
        if len(batch.canonical_smiles) <= inline_limit:
            answers = self._local_answers(batch, names)
        else:
            answers = await asyncio.get_running_loop().run_in_executor(
                self.compute, self._local_answers, batch, names)
        for name, task in remote_tasks.items():
            try:
                remote_answers = await task
            except RemoteFailure as failure:
                reasons[name] = failure.reason
                continue
            merged = []
            for slot, answer in enumerate(remote_answers):
                if "error" in answer and name in answers:
                    merged.append(self._degrade(answers[name][slot], "worker_error"))
                else:
                    merged.append(answer)
            answers[name] = merged
        for name, reason in reasons.items():
            if on_degraded is not None:
                on_degraded(name, reason)
            if name in answers:
                answers[name] = [self._degrade(a, reason) for a in answers[name]]
            else:
                message = f"the transformer tier could not answer ({reason}) and no fast model exists"
                answers[name] = [{"error": message, "kind": "predicted", "units": "",
                                  "provenance": {"model_id": f"{name}/none", "version": 0,
                                                 "tier": "fast", "degraded": True,
                                                 "degraded_reason": reason}}
                                 for _ in batch.canonical_smiles]
        response = self._assemble(results, owners, answers, names, started, len(molecules), batch)
        from molserve.logs import request_id

        response["request_id"] = request_id.get()
        response["tiers"] = {name: ("fast" if name in reasons else plan[name]) for name in names}
        response["degraded"] = {name: reason for name, reason in reasons.items()}
        return response

    @staticmethod
    def _degrade(answer: dict[str, Any], reason: str) -> dict[str, Any]:
        return {**answer, "provenance": {**answer["provenance"], "degraded": True,
                                         "degraded_reason": reason}}
