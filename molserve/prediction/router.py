"""The router: one place that answers a predict request for every caller (the gateway,
`molserve predict`, screening jobs).

It parses each input once, merges duplicates, plans per endpoint which tier answers first
(computed, fast, a remote worker tier, or a blend of the fast tier with one, whichever scored
best on out-of-fold or validation evidence inside the training data; never on the test split),
sends the remote work first so the fast tier answers meanwhile (hedging),
degrades an endpoint to the fast tier with the reason whenever the remote tier cannot answer in
time, and assembles the answers in input order. No request fails because a worker failed.

Per-molecule problems (an unreadable SMILES) are values in the answer; request-level problems
(unknown endpoint, batch too large) are the project's own errors (`molserve.errors`), which each
face turns into its own message (an HTTP status and body, a CLI line). Answers are typed
(`molserve.answers.Answer`): each face serializes them once, at its edge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from molserve.answers import Answer, Provenance
from molserve.chem.molecules import InvalidSmiles, try_parse
from molserve.errors import InvalidInput, NotFound, TooLarge, Unavailable
from molserve.prediction import choice
from molserve.prediction.blend import BLEND_TIER, COMBINED_TIERS, MEAN_TIER, combine, usable, usable_blend
from molserve.prediction.tiers import ComputedTier, FastTier, MoleculeBatch
from molserve.registry.store import ArtifactError, Registry

if TYPE_CHECKING:  # the remote tier (httpx) is imported only where workers are configured
    from molserve.prediction.explain import Explainer
    from molserve.prediction.remote import RemoteTier

log = logging.getLogger("molserve.prediction")


REMOTE_TIERS = ("transformer", "graph", "foundation")
# An unknown endpoint's error: suggestions for the first few names, the names listed up to a
# bound, each cut to an endpoint name's length (a request must not make the answer large).
SUGGESTED, LISTED, MAX_NAME = 3, 20, 64
CALIBRATED_LEVELS = (0.8, 0.9, 0.95)


def _remote_of(planned: str) -> str | None:
    """The worker tier a planned tier asks (a blend asks its worker tier), or None."""
    if planned in COMBINED_TIERS:
        return COMBINED_TIERS[planned]
    return planned if planned in REMOTE_TIERS else None


def calibrated_level(confidence: float | None) -> float | None:
    """The calibrated interval level that answers a requested one: itself, or the next one above
    (the answer states the level it has); above the highest, an error."""
    if confidence is None:
        return None
    for level in CALIBRATED_LEVELS:
        if confidence <= level + 1e-9:
            return level
    raise InvalidInput(f"confidence {confidence}: intervals are calibrated at "
                       f"{', '.join(map(str, CALIBRATED_LEVELS))}", code="invalid_confidence")


class Router:
    """The tiers of this process (fast, computed) and, when configured, the remote ones."""

    def __init__(self, registry: Registry, *, max_batch: int = 1000,
                 compute: Executor | None = None, max_explained: int = 100) -> None:
        self.registry = registry
        self.max_batch = max_batch
        # An explained answer adds about 13 kB of JSON (its depiction most of it): every
        # endpoint of 100 molecules is some 60 MB already.
        self.max_explained = max_explained
        self.fast = FastTier(registry)
        self.computed = ComputedTier()
        self.remotes: dict[str, RemoteTier] = {}  # tier name -> the workers' tier
        # CPU work of large batches runs here (the gateway gives a pool sized to the cores), so
        # concurrent batches queue instead of thrashing.
        self.compute = compute
        self.loaded_at: float | None = None
        # (endpoint, tier, seconds) of each tier's answer to one request; a server points this
        # at its latency histogram.
        self.observe_tier: Callable[[str, str, float], None] = lambda *_: None
        # Endpoints a running bootstrap has not trained yet: name -> {state, progress, step}.
        self.pending: Callable[[], dict[str, dict]] = dict
        # Reference sets: an object with `annotate_response(response, reference)` that sets each
        # answer's reference percentile; None serves answers without one.
        self.references: Any = None
        self._explainer: Explainer | None = None  # built at the first `explain` request

    def load(self, only: list[str] | None = None) -> None:
        """Load the newest fast model of each endpoint (or of the endpoints in `only`)."""
        self.fast.load(only)
        self.loaded_at = time.time()

    # What can be asked -------------------------------------------------------------------
    @property
    def predicted_endpoints(self) -> list[str]:
        return self.fast.endpoints()

    @property
    def remote(self) -> RemoteTier | None:
        """The transformer tier (the remote tier this router had before graph models)."""
        return self.remotes.get("transformer")

    def served_remotely(self) -> dict[str, dict[str, dict]]:
        """tier -> {endpoint: model info (with test metrics)} for every remote tier."""
        return {name: tier.served_endpoints() for name, tier in self.remotes.items()}

    @property
    def remote_endpoints(self) -> list[str]:
        return sorted({e for tier in self.remotes.values() for e in tier.endpoints()})

    @property
    def default_endpoints(self) -> list[str]:
        """What a request that names no endpoint gets: every predicted one, from any tier."""
        return sorted(set(self.predicted_endpoints) | set(self.remote_endpoints))

    @property
    def all_endpoints(self) -> list[str]:
        return self.default_endpoints + self.computed.endpoints()

    def private_owners(self) -> dict[str, str | None]:
        """endpoint -> owner of every private endpoint (its newest fast model was trained by a
        key, over HTTP, as `private`: its owner decides who sees its answers)."""
        return {name: model.manifest.get("owner") for name, model in self.fast.models.items()
                if model.manifest.get("visibility") == "private"}

    def hidden_from(self, owner: str | None, admin: bool = False) -> frozenset[str]:
        """The endpoints a caller may not see (another key's private ones): to it they do not
        exist. Admins and the operator (`owner` None with `admin`) see everything."""
        if admin:
            return frozenset()
        return frozenset(name for name, who in self.private_owners().items() if who != owner)

    def resolve_endpoints(self, requested: list[str] | None,
                          hidden: frozenset[str] = frozenset()) -> list[str]:
        if requested is None:
            return [name for name in self.default_endpoints if name not in hidden]
        known = set(self.all_endpoints) - hidden
        unknown = [e for e in requested if e not in known]
        pending = self.pending()
        training = {e: pending[e] for e in unknown if e in pending and e not in hidden}
        if training:
            shown = ", ".join(f"{e} ({p.get('state')}, {p.get('progress', 0) * 100:.0f}%)"
                              for e, p in training.items())
            raise Unavailable(
                f"still being trained at start-up: {shown}; retry in a few minutes "
                "(GET /readyz shows progress)",
                code="endpoint_training", details={"training": training, "retry_after_s": 30.0})
        if unknown:
            import difflib

            # Suggestions for the first few only: each costs a comparison with every name.
            close = sorted({m for name in unknown[:SUGGESTED] for m in difflib.get_close_matches(
                name[:MAX_NAME], known, n=2)})
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            shown = ", ".join(repr(name[:MAX_NAME]) for name in unknown[:SUGGESTED])
            more = f" and {len(unknown) - SUGGESTED} more" if len(unknown) > SUGGESTED else ""
            # A name that names nothing is not found (404), like a missing model or job.
            raise NotFound(
                f"unknown endpoint(s): {shown}{more}; {hint}{len(known)} are available "
                "(GET /v1/endpoints, molserve models list)",
                code="unknown_endpoint",
                details={"unknown": [name[:MAX_NAME] for name in unknown[:LISTED]],
                         "unknown_count": len(unknown), "available": sorted(known)},
            )
        if not requested:
            raise InvalidInput("endpoints is empty; name at least one", code="no_endpoints")
        return list(dict.fromkeys(requested))

    def check_size(self, n: int, explain: bool = False) -> None:
        if n > self.max_batch:
            raise TooLarge(
                f"{n} molecules in one request; the limit is {self.max_batch}. Split the batch, "
                "or submit a screen job for large files",
                code="batch_too_large", details={"limit": self.max_batch, "received": n},
            )
        if explain and n > self.max_explained:
            raise TooLarge(
                f"{n} molecules to explain in one request; explanations are given for at most "
                f"{self.max_explained} at a time. Split the batch, or ask without explain",
                code="explain_batch_too_large", details={"limit": self.max_explained, "received": n},
            )

    def endpoint_info(self, hidden: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        remote = self.served_remotely()
        names = (set(self.fast.endpoints()) | {e for served in remote.values() for e in served}) - hidden
        infos = []
        for name in sorted(names):
            listed = [(tier, served[name]) for tier, served in remote.items() if name in served]
            info = self.fast.info(name) if name in self.fast.models else {
                "name": name, "kind": "predicted", "task": listed[0][1].get("task", ""),
                "units": listed[0][1].get("units", ""), "description": "", "tiers": [],
                "models": []}
            if listed:
                info["tiers"] = [*info["tiers"], *(tier for tier, _ in listed)]
                info["models"] = [*info["models"], *(model for _, model in listed)]
                fast = self.fast.models.get(name)
                graph = remote.get("graph", {}).get(name)
                mean = usable(graph, fast.artifact.version) if fast is not None and graph else None
                if mean is not None:  # the tiers' mean, scored on the same molecules
                    info["tiers"] = [*info["tiers"], MEAN_TIER]
                    info["models"] = [*info["models"], {
                        "model_id": f"{name}/{MEAN_TIER}", "tier": MEAN_TIER,
                        "version": f"{fast.artifact.version}+{graph.get('version')}",
                        "kind": "mean of the fast and graph tiers' answers",
                        "metrics": mean.get("test") or {},
                        **({"valid": mean["valid"]} if mean.get("valid") else {})}]
                foundation = remote.get("foundation", {}).get(name)
                blend = usable_blend(foundation, fast.artifact.version) \
                    if fast is not None and foundation else None
                if blend is not None:  # the stacked blend, fitted and scored out of fold
                    cv = foundation.get("cv") or {}
                    info["tiers"] = [*info["tiers"], BLEND_TIER]
                    info["models"] = [*info["models"], {
                        "model_id": f"{name}/{BLEND_TIER}", "tier": BLEND_TIER,
                        "version": f"{fast.artifact.version}+{foundation.get('version')}",
                        "kind": f"stacked blend: {1 - blend['weight']:.2f} x fast + "
                                f"{blend['weight']:.2f} x foundation",
                        "metrics": blend.get("test") or {},
                        "cv": {"metric": cv.get("metric"), "scores": cv.get(BLEND_TIER)}}]
                info["cv"] = self.cv_scores(name)
                info["preferred_tier"] = self.preferred_tier(name)
            infos.append(info)
        infos += self.pending_info()
        return infos + [self.computed.info(e) for e in self.computed.endpoints()]

    def pending_info(self) -> list[dict[str, Any]]:
        """Bundled endpoints a start-up bootstrap is still training, with their progress."""
        pending = self.pending()
        if not pending:
            return []
        from molserve.data.catalog import bundled_endpoints

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

    # Planning ----------------------------------------------------------------------------
    def _listings(self, endpoint: str) -> dict[str, dict[str, Any]]:
        """worker tier -> its listing of `endpoint` (tiers that do not serve it are absent)."""
        return {tier: served[endpoint] for tier, served in self.served_remotely().items()
                if endpoint in served}

    def cv_scores(self, endpoint: str) -> dict[str, Any] | None:
        """The out-of-fold evidence for `endpoint` (`prediction.choice.cv_scores`)."""
        fast = self.fast.models.get(endpoint)
        return choice.cv_scores(fast.artifact if fast else None, self._listings(endpoint).get("foundation"))

    def preferred_tier(self, endpoint: str) -> str:
        """The tier that answers `endpoint` when a request names none, on evidence inside the
        training data only (`prediction.choice`)."""
        fast = self.fast.models.get(endpoint)
        return choice.preferred_tier(fast.artifact if fast else None, self._listings(endpoint))

    def _blend_fitted(self, endpoint: str) -> bool:
        fast = self.fast.models.get(endpoint)
        listing = self.served_remotely().get("foundation", {}).get(endpoint)
        return fast is not None and usable_blend(listing, fast.artifact.version) is not None

    def plan(self, names: list[str], tier: str) -> dict[str, str]:
        """endpoint -> the tier to try first ('fast', a worker tier ('transformer', 'graph',
        'foundation'), a blend ('fast+graph', 'fast+foundation') or 'computed')."""
        plan = {}
        for name in names:
            if name in self.computed.served():
                plan[name] = "computed"
            elif tier == BLEND_TIER and not self._blend_fitted(name):
                # No blend was fitted with the live fast model: the foundation tier alone.
                plan[name] = "foundation"
            elif tier in ("fast", *REMOTE_TIERS, *COMBINED_TIERS):
                plan[name] = tier
            else:
                plan[name] = self.preferred_tier(name)
        return plan

    # Answering ---------------------------------------------------------------------------
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

    def _local_answers(self, batch: MoleculeBatch, names: list[str]) -> dict[str, list[Answer]]:
        answers: dict[str, list[Answer]] = {}
        batch.wanted = frozenset(names)
        for name in names:
            for tier in (self.fast, self.computed):
                if name in tier.served():
                    started = time.perf_counter()
                    answers[name] = tier.answer(batch, name)
                    self.observe_tier(name, tier.name, time.perf_counter() - started)
                    break
        return answers

    @staticmethod
    def _assemble(results, owners, answers: dict[str, list[Answer]], names, started, n, batch):
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

    def _explain(self, batch: MoleculeBatch, answers: dict[str, list[Answer]]) -> None:
        """Attach an explanation (`molserve.prediction.explain`) to every fast-tier answer, in
        place: per-atom and per-descriptor contributions to the model's raw output, and the
        molecule drawn with its atoms shaded by them."""
        from molserve.chem.depict import contribution_svg
        from molserve.prediction.explain import Explainer

        if self._explainer is None:
            self._explainer = Explainer()
        atom_maps: dict = {}  # one mapping of each molecule's Morgan bits, for every endpoint
        for name, listed in answers.items():
            model = self.fast.models.get(name)
            group = next((g for g in self.fast.groups if name in g.names), None)
            slots = [slot for slot, answer in enumerate(listed)
                     if answer.provenance.tier == "fast" and not answer.is_error]
            if model is None or group is None or not slots:
                continue
            smiles = [batch.canonical_smiles[slot] for slot in slots]
            try:
                explained = self._explainer.explain(model, batch.features(group.spec).matrix[slots],
                                                    group.spec, smiles, atom_maps)
            except (ArtifactError, OSError, ValueError, KeyError) as error:
                log.error("no explanation for %s: %s", name, error)
                explained = [{"error": f"no explanation for this model: {error}"} for _ in slots]
            served = batch.scores.get(name)
            for slot, key, explanation in zip(slots, smiles, explained, strict=True):
                if "raw" in explanation and served is not None \
                        and abs(float(served[slot].mean()) - explanation["raw"]) > 1e-6:
                    explanation = {"error": "the explained trees disagree with the served model; "
                                            "no explanation can be given"}
                elif model.combination is not None and "raw" in explanation:
                    # The trees explained are the local part; the answer also adds the bases.
                    c = model.combination
                    explanation["scope"] = (
                        f"the local model's raw output; the answer is {c.intercept:.4g} + "
                        f"{c.local_weight:.4g} x that + " + " + ".join(
                            f"{w:.4g} x {b.endpoint} v{b.version}" for w, b in zip(c.base_weights, c.bases,
                                                                                   strict=True)))
                if "atoms" in explanation and "error" not in explanation:
                    try:
                        explanation["svg"] = contribution_svg(key, explanation["atoms"])
                    except ValueError as error:  # the numbers stand without their picture
                        log.warning("no depiction of %s: %s", key, error)
                listed[slot] = replace(listed[slot], explanation=explanation)

    def _annotate(self, response: dict[str, Any], reference: str | None) -> None:
        if self.references is not None:
            self.references.annotate_response(response, reference)

    def _predict_local(self, molecules: list[str], endpoints: list[str] | None,
                       explain: bool = False, confidence: float | None = None,
                       hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
        started = time.perf_counter()
        self.check_size(len(molecules), explain)
        names = self.resolve_endpoints(endpoints, hidden)
        results, batch, owners = self._parse(molecules)
        batch.confidence = calibrated_level(confidence)
        answers = self._local_answers(batch, names) if batch.canonical_smiles else {}
        if explain and answers:
            self._explain(batch, answers)
        return self._assemble(results, owners, answers, names, started, len(molecules), batch)

    def predict_local(self, molecules: list[str], endpoints: list[str] | None, *,
                      explain: bool = False, reference: str | None = None,
                      confidence: float | None = None,
                      hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
        """This process's tiers only (fast and computed): the offline path of `molserve predict`
        and screening jobs, and of the gateway when no remote tier is asked. With `explain`,
        every fast-tier answer carries its explanation; `reference` names the reference set of
        the answers' percentiles (None: the default set); `confidence` the level of the
        regression intervals (0.8, 0.9 or 0.95; None: 0.9)."""
        response = self._predict_local(molecules, endpoints, explain, confidence, hidden)
        self._annotate(response, reference)
        return response

    async def predict(self, molecules: list[str], endpoints: list[str] | None, *,
                      tier: str = "auto", deadline_ms: float | None = None,
                      request_id: str | None = None, inline_limit: int = 0,
                      on_degraded: Callable[[str, str], None] | None = None,
                      explain: bool = False, reference: str | None = None,
                      confidence: float | None = None,
                      hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Route each endpoint to its tier; fall back to the fast tier, labelled degraded with
        the reason, whenever the remote tier cannot answer within the deadline. Batches above
        `inline_limit` molecules, and every explained batch (drawing costs milliseconds a
        molecule), compute in the executor, not on the event loop. `explain` and `reference` as
        in `predict_local`; only fast-tier answers are explained. Worker tiers calibrate their
        intervals at 0.9 only: another `confidence` is answered by the fast tier. `hidden`: the
        endpoints the caller may not see (`hidden_from`), unknown to it."""
        started = time.perf_counter()
        self.check_size(len(molecules), explain)
        names = self.resolve_endpoints(endpoints, hidden)
        confidence = calibrated_level(confidence)
        plan = self.plan(names, "fast" if confidence not in (None, 0.9) and tier != "fast" else tier)
        if not any(_remote_of(first) for first in plan.values()):
            if (len(molecules) <= inline_limit and not explain) or self.compute is None:
                response = self._predict_local(molecules, names, explain, confidence)
            else:
                response = await asyncio.get_running_loop().run_in_executor(
                    self.compute, self._predict_local, molecules, names, explain, confidence)
            response = {**response, "tiers": plan, "degraded": {}}
            self._annotate(response, reference)
            return response
        from molserve.prediction.remote import RemoteFailure

        if len(molecules) <= inline_limit or self.compute is None:
            results, batch, owners = self._parse(molecules)
        else:  # RDKit parses in the executor, as for the local path: never on the event loop
            results, batch, owners = await asyncio.get_running_loop().run_in_executor(
                self.compute, self._parse, molecules)
        if not batch.canonical_smiles:  # nothing readable: per-molecule errors, nothing to route
            response = self._assemble(results, owners, {}, names, started, len(molecules), batch)
            response = {**response, "tiers": plan, "degraded": {}}
            self._annotate(response, reference)
            return response
        # The caller's deadline (or the remote tier's default) bounds this request's wait only.
        timeout_s = (deadline_ms / 1000) if deadline_ms else max(
            (t.settings.timeout_s for t in self.remotes.values()), default=1.0)
        deadline = time.monotonic() + timeout_s
        remote_tasks: dict[str, asyncio.Task] = {}
        reasons: dict[str, str] = {}
        for name, planned in plan.items():
            first = _remote_of(planned)
            if first is None:
                continue
            remote = self.remotes.get(first)
            if remote is None:
                reasons[name] = f"no_{first}_model"
                continue
            # Sent first, so the worker computes while the fast tier answers here (hedging).
            remote_tasks[name] = asyncio.create_task(
                self._remote_timed(remote, batch, name, deadline, request_id))
        if len(batch.canonical_smiles) <= inline_limit or self.compute is None:
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
            if plan[name] in COMBINED_TIERS and name in answers:
                answers[name] = self._combined_answers(name, plan[name], answers[name], remote_answers)
                continue
            merged = []
            for slot, answer in enumerate(remote_answers):
                if answer.is_error and name in answers:
                    # The worker's own reason for this molecule (e.g. too_long_for_model).
                    reason = answer.provenance.details.get("error_code") or "worker_error"
                    merged.append(answers[name][slot].degrade(str(reason)))
                else:
                    merged.append(answer)
            answers[name] = merged
        for name, reason in reasons.items():
            if on_degraded is not None:
                on_degraded(name, reason)
            if name in answers:
                answers[name] = [a.degrade(reason) for a in answers[name]]
            else:
                message = f"the {plan[name]} tier could not answer ({reason}) and no fast model exists"
                missing = Answer(Provenance(f"{name}/none", 0, "fast", degraded=True,
                                            degraded_reason=reason), error=message)
                answers[name] = [missing for _ in batch.canonical_smiles]
        if explain:
            if self.compute is None:
                self._explain(batch, answers)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self.compute, functools.partial(self._explain, batch, answers))
        response = self._assemble(results, owners, answers, names, started, len(molecules), batch)
        # A blend asked of an endpoint without a fast model is its worker tier's answer alone.
        answered = {name: COMBINED_TIERS[plan[name]]
                    if plan[name] in COMBINED_TIERS and name not in self.fast.models
                    else plan[name] for name in names}
        response["tiers"] = {name: ("fast" if name in reasons else answered[name]) for name in names}
        response["degraded"] = dict(reasons)
        self._annotate(response, reference)
        return response

    def _combined_answers(self, name: str, tier: str, fast: list[Answer],
                          other: list[Answer]) -> list[Answer]:
        model = self.fast.models[name]
        listing = self.served_remotely().get(COMBINED_TIERS[tier], {}).get(name, {})
        return combine(name, fast, other, task=model.task, transform=model.transform,
                       label_names=model.manifest.get("label_names"), listing=listing, tier=tier)

    async def _remote_timed(self, remote: RemoteTier, batch: MoleculeBatch, name: str,
                            deadline: float, request_id: str | None) -> list[Answer]:
        started = time.perf_counter()
        answers = await remote.answer(batch, name, deadline, request_id)
        self.observe_tier(name, remote.name, time.perf_counter() - started)
        return answers

