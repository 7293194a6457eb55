"""The tiers behind one small protocol: which endpoints they serve (`served`), their model
information (`info`), and `answer(molecules, endpoint)`: values with provenance, one per
molecule, in order. The fast tier and computed properties run in this process; the remote
transformer tier (`molserve.prediction.remote`) speaks the same protocol, asynchronously and
with a deadline."""

from __future__ import annotations

import logging
from collections.abc import KeysView
from dataclasses import dataclass, field
from typing import Any

from rdkit import Chem

from molserve.answers import Answer, Provenance
from molserve.chem import descriptors
from molserve.chem.features import FeatureBatch, FeatureSpec, featurize, union_spec
from molserve.chem.molecules import largest_fragment
from molserve.models.gbm_runtime import FastModel
from molserve.registry.manifest import DatasetInfo
from molserve.registry.store import ArtifactError, Registry

log = logging.getLogger("molserve.prediction")


@dataclass
class MoleculeBatch:
    """Distinct, valid molecules of one request, with features computed at most once per spec.

    Models see the parent (largest) fragment of each molecule, as in training, where curation
    strips counter-ions and solvents.
    """

    canonical_smiles: list[str]
    mols: list[Chem.Mol]
    _features: dict[FeatureSpec, FeatureBatch] = field(default_factory=dict)

    def features(self, spec: FeatureSpec) -> FeatureBatch:
        if spec not in self._features:
            self._features[spec] = featurize([largest_fragment(m) for m in self.mols], spec)
        return self._features[spec]


class ComputedTier:
    """Exact RDKit values (labelled `computed`)."""

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
        return [Answer(prov, descriptors.compute(endpoint, mol), units, kind="computed")
                for mol in batch.mols]


class FastTier:
    """Fast-tier models (tree ensembles evaluated with numpy), the newest version of each
    endpoint."""

    name = "fast"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.models: dict[str, FastModel] = {}
        self.load_errors: dict[str, str] = {}
        self.shared_spec: FeatureSpec | None = None

    def load(self, only: list[str] | None = None) -> None:
        """Serve the newest version of each endpoint; a model already loaded at that version is
        kept as it is (a reload after one training loads one model, not all of them)."""
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
                models[endpoint] = FastModel.load(artifact)
            except (ArtifactError, OSError, ValueError, KeyError) as error:
                errors[endpoint] = str(error)
                log.error("not serving %s: %s", endpoint, error)
        self.models = models
        self.load_errors = errors
        self.shared_spec = union_spec(
            [m.spec for m in models.values() if (m.spec.radius, m.spec.n_bits) == (2, 2048)])

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
        model = self.models[endpoint]
        spec = self.shared_spec
        if spec is None or (model.spec.radius, model.spec.n_bits) != (spec.radius, spec.n_bits):
            spec = model.spec
        features = batch.features(spec)
        return model.predict(model.columns_from(features.matrix, spec), features.on_bits)

