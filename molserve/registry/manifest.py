"""The typed view of a model manifest: the fields every reader shares, validated once.

A manifest is the JSON stored beside a model's files (`manifest.json`). Each model kind also keeps
sections only its own runtime reads (the fast tier's `features` and `model`, the transformer's
heads); those stay in `Artifact.manifest`. Everything read across layers (task, units, metrics,
the multi-task views, the test score that decides which tier answers) is read from here.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    test: dict[str, Any] = Field(default_factory=dict, description="Held-out test split metrics.")
    valid: dict[str, Any] | None = Field(
        None, description="Validation side metrics of the model that chose on it (the fast tier's "
                          "selection model; the graph tier's early-stopped networks): what "
                          "routing compares between tiers validated on the same molecules.")
    primary: str | None = Field(None, description="The metric model selection used.")
    out_of_fold: dict[str, Any] | None = None
    fast_model_test: dict[str, Any] | None = Field(
        None, description="Transformer models: the fast model's test metrics on the same split.")


def test_score(test: dict[str, Any] | None) -> float:
    """Higher is better: -RMSE (regression) or ROC AUC (classification) on a test split; -inf
    when the split has neither (nothing to compare)."""
    test = test or {}
    if test.get("rmse") is not None:
        return -float(test["rmse"])
    value = test.get("roc_auc")
    return float(value) if value is not None and math.isfinite(value) else float("-inf")


def scored_better(candidate: dict[str, Any] | None, incumbent: dict[str, Any] | None) -> bool:
    """True when `candidate` beat `incumbent` on the same molecules, by the same metric."""
    candidate, incumbent = candidate or {}, incumbent or {}
    for metric in ("rmse", "roc_auc"):
        if candidate.get(metric) is not None and incumbent.get(metric) is not None:
            return test_score({metric: candidate[metric]}) > test_score({metric: incumbent[metric]})
    return False


def preferred_over(candidate: dict[str, Any], incumbent: dict[str, Any]) -> bool:
    """True when `candidate` should answer rather than `incumbent`, each given as
    `{"valid": metrics, ...}`: on the validation side, where both were validated on the same
    molecules (the fast tier and the graph tier, which trains on the fast model's split). Models
    without that evidence are not compared at all (False): the test split chooses nothing."""
    valid_c, valid_i = candidate.get("valid") or {}, incumbent.get("valid") or {}
    if any(valid_c.get(m) is not None and valid_i.get(m) is not None for m in ("rmse", "roc_auc")):
        return scored_better(valid_c, valid_i)
    return False


def split_evidence(split: dict[str, Any] | None) -> dict[str, Any]:
    """What a worker-tier model records about the held-out split it was tested on: the fast
    model it shares it with (`shared_with`, "<endpoint> v<N> (gbm)") and, for models written
    since, the checksum of that fast model's curated rows and split (`data.csv`)."""
    split = split or {}
    return {"shared_with": split.get("shared_with"),
            "data_sha256": (split.get("evidence") or {}).get("data_sha256")}


def routing_listing(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a worker lists about a model for routing (`molserve.prediction.choice`): the split it
    shares with a fast model (`evidence`) and, for the models that record them, the scores a
    choice compares: a graph model's validation metrics (on its fast model's validation
    molecules) and the fast and graph tiers' mean; a foundation model's out-of-fold scores beside
    the fast tier's and their blend's (`cv`), and the blend itself (weight, intervals)."""
    metrics = manifest.get("metrics") or {}
    listing: dict[str, Any] = {"evidence": split_evidence(manifest.get("split"))}
    if manifest.get("kind") == "graph":
        listing.update({key: metrics[key] for key in ("valid", "tiers_mean") if metrics.get(key)})
    elif manifest.get("kind") == "foundation":
        listing.update(cv=metrics.get("cv") or {}, blend=manifest.get("blend"),
                       leakage_caveat=manifest.get("leakage_caveat"))
    return listing


def evidence_mismatch(evidence: dict[str, Any] | None, fast_manifest: dict[str, Any]) -> str | None:
    """None when a worker-tier model was tested on the live fast model's split (same dataset
    version, same split: the same curated rows and sides), else why its test metric cannot be
    compared with the fast model's. Such a model may have been trained on molecules that are now
    in the fast model's test set, so its score proves nothing against the fast model's."""
    evidence = evidence or {}
    endpoint, version = fast_manifest.get("endpoint"), fast_manifest.get("version")
    data = ((fast_manifest.get("files") or {}).get("data.csv") or {}).get("sha256")
    live = f"{endpoint} v{version} (gbm)"
    if evidence.get("data_sha256") and data:
        if evidence["data_sha256"] == data:
            return None
        return (f"tested on {evidence.get('shared_with') or 'another'} split, not the live fast "
                f"model's ({live}): another dataset version or split, so the scores are not comparable")
    if evidence.get("shared_with"):
        if evidence["shared_with"] == live:
            return None
        return (f"tested on the split of {evidence['shared_with']}, not of the live fast model "
                f"({live}); retrain it on the current split to compare")
    return "records no split shared with the live fast model; its score cannot be compared"


def unequal_evidence(fast_manifest: dict[str, Any] | None,
                     remote: dict[str, dict[str, Any]]) -> dict[str, str]:
    """tier -> why its model for the fast model's endpoint is not preferred (unequal evidence),
    from the workers' listings (`{tier: model info}`); empty when every one is comparable."""
    if fast_manifest is None:
        return {}
    return {tier: why for tier, info in remote.items()
            if (why := evidence_mismatch(info.get("evidence"), fast_manifest))}


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    source: str | None = None
    licence: str | None = None
    citation: str | None = None
    tdc_name: str | None = None
    rows: int | None = None
    sha256: str | None = None

    def label(self) -> str | None:
        """How an answer names its training data, e.g. `TDC Caco2_Wang`."""
        if self.tdc_name:
            return f"TDC {self.tdc_name}"
        return self.name


class TaskView(BaseModel):
    """One endpoint of a multi-task model, in the single-task manifest's terms."""

    model_config = ConfigDict(extra="allow")

    task: str
    units: str = ""
    description: str = ""
    label_names: list[str] | None = None
    dataset: DatasetInfo | None = None
    metrics: Metrics = Field(default_factory=Metrics)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    endpoint: str
    version: int | None = None
    kind: str = "unknown"
    tier: str | None = None
    task: str
    model_id: str | None = None
    units: str = ""
    description: str = ""
    label_names: list[str] | None = None
    created: str | None = None
    job_id: str | None = Field(None, description="The job that trained this model, if any.")
    dataset: DatasetInfo | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    tasks: dict[str, TaskView] | None = Field(None, description="Multi-task models: per endpoint.")

    @property
    def multitask(self) -> bool:
        return self.task == "multitask" and bool(self.tasks)

    def endpoints(self) -> list[str]:
        """The endpoints this model answers for."""
        return list(self.tasks or {}) if self.multitask else [self.endpoint]

    def view(self, endpoint: str) -> TaskView:
        """What the model says about one endpoint (single-task models: about their own)."""
        if self.multitask:
            assert self.tasks is not None
            if endpoint not in self.tasks:
                raise KeyError(f"{self.endpoint} v{self.version} does not serve {endpoint!r}")
            return self.tasks[endpoint]
        return TaskView(task=self.task, units=self.units, description=self.description,
                        label_names=self.label_names, dataset=self.dataset, metrics=self.metrics)

    def test_metrics(self) -> dict[str, Any]:
        """Test metrics: the model's, or per endpoint for a multi-task model."""
        if self.multitask:
            return {e: t.metrics.test for e, t in (self.tasks or {}).items()}
        return self.metrics.test

    def test_score(self, endpoint: str | None = None) -> float:
        """Higher is better, on `endpoint`'s test split (see `test_score`)."""
        return test_score(self.view(endpoint or self.endpoint).metrics.test)
