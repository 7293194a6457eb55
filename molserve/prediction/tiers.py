"""The tiers behind one small protocol: which endpoints they serve (`served`), their model
information (`info`), and `answer(molecules, endpoint)`: values with provenance, one per
molecule, in order. The fast tier and computed properties run in this process; the remote
transformer tier (`molserve.prediction.remote`) speaks the same protocol, asynchronously and
with a deadline."""

from __future__ import annotations

import gc
import logging
from collections.abc import KeysView
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rdkit import Chem

from molserve.answers import Answer, Provenance
from molserve.chem import descriptors
from molserve.chem.features import FeatureBatch, FeatureSpec, featurize
from molserve.chem.molecules import largest_fragment
from molserve.models.gbm_runtime import FastModel
from molserve.prediction import stacked
from molserve.prediction.stacked import Stack
from molserve.registry.manifest import DatasetInfo
from molserve.registry.store import ArtifactError, Registry

log = logging.getLogger("molserve.prediction")

# Up to this many molecules a batch keeps each molecule's similarity to every training molecule
# (about 0.5 MB a molecule for the bundled endpoints) between the endpoints asked.
_FEW_MOLECULES = 16


@dataclass
class MoleculeBatch:
    """Distinct, valid molecules of one request, with features computed at most once per spec.

    Models see the parent (largest) fragment of each molecule, as in training, where curation
    strips counter-ions and solvents.
    """

    canonical_smiles: list[str]
    mols: list[Chem.Mol]
    _features: dict[FeatureSpec, FeatureBatch] = field(default_factory=dict)
    # Filled by the fast tier, several endpoints at a time: endpoint -> raw member scores;
    # endpoint -> (domain similarity, nearest training SMILES); and, for a few molecules, each
    # one's similarity to every training molecule of a group (keyed by the group's index).
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    domains: dict[str, tuple[np.ndarray, list[str | None]]] = field(default_factory=dict)
    similarities: dict[int, list[np.ndarray | None]] = field(default_factory=dict)
    # The endpoints the caller will ask of this batch (the router says so before asking), so
    # the fast tier can choose between one model's trees and the group's stacked ones.
    wanted: frozenset[str] = frozenset()
    # The level of the fast tier's regression intervals (None: each model's default, 0.9).
    confidence: float | None = None

    def features(self, spec: FeatureSpec) -> FeatureBatch:
        if spec not in self._features:
            self._features[spec] = featurize([largest_fragment(m) for m in self.mols], spec)
        return self._features[spec]


class ComputedTier:
    """Exact RDKit values (labelled `computed`); rules and alerts add a label (pass/fail) and
    details (violations, alerts with atoms numbered in the canonical SMILES)."""

    name = "computed"

    def served(self) -> KeysView[str]:
        """A live view, not a copy: asked once per endpoint on every request."""
        return descriptors.COMPUTED.keys()

    def endpoints(self) -> list[str]:
        return list(descriptors.COMPUTED)

    def info(self, name: str) -> dict[str, Any]:
        prop = descriptors.COMPUTED[name]
        return {
            "name": name, "kind": "computed", "task": "computed", "units": prop.units,
            "description": prop.description, "tiers": ["computed"],
            "models": [descriptors.provenance(name)],
        }

    def answer(self, batch: MoleculeBatch, endpoint: str) -> list[Answer]:
        prov = Provenance.from_json(descriptors.provenance(endpoint))
        units = descriptors.COMPUTED[endpoint].units
        answers = []
        for smiles, mol in zip(batch.canonical_smiles, batch.mols, strict=True):
            try:
                result = descriptors.evaluate(endpoint, mol, smiles)
            except (ValueError, RuntimeError) as error:  # RDKit refusing one molecule
                answers.append(Answer(prov, units=units, kind="computed",
                                      error=f"{endpoint} could not be computed: {error}"))
                continue
            answers.append(Answer(prov, result.value, units, kind="computed", label=result.label,
                                  details=result.details))
        return answers


def _return_freed_memory() -> None:
    """Give the heap pages freed after loading back to the system (glibc only; elsewhere a
    no-op). Loading reads each model's arrays and training SMILES, stacks them and drops the
    per-model copies: well over 100 MB freed in small and large pieces that glibc would otherwise
    keep resident."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


@dataclass(frozen=True)
class _Served:
    """One loaded state of the fast tier."""

    models: dict[str, FastModel]
    load_errors: dict[str, str]
    groups: list[Stack]
    group_of: dict[str, Stack]
    shared_spec: FeatureSpec | None


class FastTier:
    """Fast-tier models (tree ensembles evaluated with numpy), the newest version of each
    endpoint.

    Models with the same fingerprint settings form a group (in practice all of them): one
    feature matrix per request, one stacked forest and one similarity index, so asking every
    endpoint costs a few times what asking one does, not forty-five times.
    """

    name = "fast"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._served = _Served({}, {}, [], {}, None)

    # What is served is one snapshot, replaced in one assignment by `load`: a request reads
    # models, groups and the group of each endpoint from the same one, never a mix of two.
    @property
    def models(self) -> dict[str, FastModel]:
        return self._served.models

    @property
    def load_errors(self) -> dict[str, str]:
        return self._served.load_errors

    @property
    def groups(self) -> list[Stack]:
        return self._served.groups

    @property
    def shared_spec(self) -> FeatureSpec | None:
        return self._served.shared_spec

    def load(self, only: list[str] | None = None) -> None:
        """Serve the newest version of each endpoint; a model already loaded at that version is
        kept as it is (a reload after one training loads one model, not all of them), and the
        stacked arrays are rebuilt only when the set of models changed (so processes forked
        after loading keep sharing them)."""
        models: dict[str, FastModel] = {}
        errors: dict[str, str] = {}
        for endpoint in self.registry.endpoints():
            if only is not None and endpoint not in only:
                continue
            artifact = self.registry.latest(endpoint, kind="gbm")
            if artifact is None:
                continue
            current = self.models.get(endpoint)
            if current is not None and current.artifact.version == artifact.version:
                models[endpoint] = current
                continue
            try:
                models[endpoint] = FastModel.load(artifact, arrays=False)
            except (ArtifactError, OSError, ValueError, KeyError) as error:
                errors[endpoint] = str(error)
                log.error("not serving %s: %s", endpoint, error)
        by_settings: dict[tuple[int, int], list[FastModel]] = {}
        for model in models.values():
            by_settings.setdefault((model.spec.radius, model.spec.n_bits), []).append(model)
        kept = {g.key: g for g in self.groups}
        # The stack of every endpoint is stored next to the registry (one file), so a start reads
        # it instead of every model's arrays; a subset (`only`) is stacked in memory only.
        store = self.registry.root / ".serving" if only is None else None
        groups, built = [], False
        for members in by_settings.values():
            key = Stack.key_of(members)
            group = kept.get(key)
            if group is None and store is not None:
                group = stacked.read(key, members, store)
                built = built or group is not None
            if group is None:
                for model in list(members):
                    try:
                        model.load_arrays()
                    except (ArtifactError, OSError, ValueError, KeyError) as error:
                        errors[model.endpoint] = str(error)
                        log.error("not serving %s: %s", model.endpoint, error)
                        members.remove(model)
                        del models[model.endpoint]
                if not members:
                    continue
                group, built = stacked.build(members), True
                if store is not None and group.key == key:
                    stacked.write(group, store)
            group.attach(members)
            groups.append(group)
        self._served = _Served(
            models, errors, groups, {name: group for group in groups for name in group.names},
            next((g.spec for g in groups if (g.spec.radius, g.spec.n_bits) == (2, 2048)), None))
        if built:
            gc.collect()
            _return_freed_memory()

    def served(self) -> KeysView[str]:
        return self.models.keys()

    def endpoints(self) -> list[str]:
        return sorted(self.models)

    def info(self, name: str) -> dict[str, Any]:
        model = self.models[name]
        manifest, info = model.manifest, model.info
        dataset = info.dataset or DatasetInfo()
        return {
            "name": name, "kind": "predicted", "task": info.task,
            "units": info.units, "description": info.description,
            "status": "available", "source": dataset.source,
            "tdc_dataset": dataset.tdc_name, "licence": dataset.licence,
            "citation": dataset.citation,
            "label_names": info.label_names,
            "tiers": ["fast"],
            "models": [{
                **model.provenance(),
                "dataset": manifest["dataset"],
                "split": manifest["split"],
                "metrics": manifest["metrics"],
                "applicability_domain": manifest["applicability_domain"],
                "uncertainty": manifest["uncertainty"],
            }],
        }

    def answer(self, batch: MoleculeBatch, endpoint: str) -> list[Answer]:
        served = self._served
        model = served.models[endpoint]
        combination = model.combination
        if combination is None:
            self._score(served, batch, endpoint)
            return model.answers(batch.scores[endpoint], *batch.domains[endpoint],
                                 confidence=batch.confidence)
        # A local model on bases: the bases are evaluated first (once per request: their scores
        # stay in the batch for any endpoint asked), at the versions it was fitted with.
        stale = [f"{b.endpoint} v{b.version}" + (f" (v{served.models[b.endpoint].artifact.version} "
                                                 "is served)" if b.endpoint in served.models else
                                                 " (not served)")
                 for b in combination.bases
                 if b.endpoint not in served.models
                 or served.models[b.endpoint].artifact.version != b.version]
        if stale:
            self._score(served, batch, endpoint)
            reason = (f"base {', '.join(stale)} changed since {endpoint} v{model.artifact.version} was "
                      f"trained on it: answered by {endpoint}'s local part alone (retrain {endpoint} "
                      "to learn on the new base)")
            return [a.degrade(reason) for a in model.answers(
                batch.scores[endpoint], *batch.domains[endpoint], confidence=batch.confidence,
                calibration=combination.local_calibration)]
        names = [b.endpoint for b in combination.bases]
        batch.wanted = batch.wanted | frozenset(names)
        for name in (endpoint, *names):
            self._score(served, batch, name)
        outputs = np.column_stack([batch.scores[name].mean(axis=1) for name in names])
        raw = combination.apply(batch.scores[endpoint], outputs)
        # In domain for the local model's molecules or for a base's: the nearest of either.
        similarity, nearest = batch.domains[endpoint]
        similarity, nearest = np.array(similarity, dtype=np.float64), list(nearest)
        for name in names:
            other, other_nearest = batch.domains[name]
            closer = np.asarray(other) > similarity
            similarity = np.where(closer, other, similarity)
            nearest = [o if c else s for o, s, c in zip(other_nearest, nearest, closer.tolist(), strict=True)]
        return model.answers(raw, similarity, nearest, confidence=batch.confidence)

    def _score(self, served: _Served, batch: MoleculeBatch, endpoint: str) -> None:
        """The endpoint's raw member scores and domain in the batch (with those of the other
        wanted endpoints of its group, when that costs less)."""
        model = served.models[endpoint]
        group = served.group_of[endpoint]
        features = batch.features(group.spec)
        # The router asks endpoint by endpoint, having said which it will ask (`wanted`). When a
        # quarter or more of the group is wanted, the group's stacked trees are evaluated once
        # for every endpoint (one numpy pass costs little more than one model's); otherwise
        # each model's own trees, for the endpoint asked.
        if endpoint not in batch.scores:
            left = [n for n in group.names if n not in batch.scores]
            wanted = [n for n in left if n in batch.wanted]
            several = len(wanted) > 1 and 4 * len(wanted) >= len(group.names)
            forest = group.forest if several else model.forest
            raw = forest.raw_scores(features.matrix)
            for name in left if several else [endpoint]:
                first, last = forest.output_range[name]
                batch.scores[name] = raw[:, first:last]
        if endpoint not in batch.domains:
            # Scoring a molecule against every distinct training molecule is most of a domain's
            # cost, and the same for one endpoint as for all: every wanted endpoint's domain is
            # taken from one pass (for a few molecules, the scores are kept as well).
            names = [n for n in group.names
                     if n not in batch.domains and (n in batch.wanted or n == endpoint)]
            if len(batch.canonical_smiles) <= _FEW_MOLECULES:
                key = id(group.domain)
                if key not in batch.similarities:
                    batch.similarities[key] = [group.domain.similarities(b) for b in features.on_bits]
                batch.domains.update(group.domain.nearest(features.on_bits, names,
                                                          batch.similarities[key]))
            else:
                batch.domains.update(group.domain.nearest(features.on_bits, names))
