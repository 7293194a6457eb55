"""Answers and their provenance as typed objects: built by the tiers, merged and degraded by the
router, serialized once at the edge (`to_json`, or orjson's `default` hook in
`molserve.responses`). Nothing here imports the rest of molserve.

A worker's JSON answer becomes an `Answer` through `Answer.from_json`, which is also where a
malformed answer is refused."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

_PROVENANCE_CORE = ("model_id", "version", "tier", "degraded", "degraded_reason")


@dataclass(frozen=True, slots=True)
class Provenance:
    """Which model answered: id, version and tier, plus what the tier adds (kind, training
    date, dataset, method, software), and whether the answer is a degraded fallback and why."""

    model_id: str
    version: int | str
    tier: str
    details: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False
    degraded_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"model_id": self.model_id, "version": self.version, "tier": self.tier, **self.details}
        if self.degraded:
            out["degraded"] = True
            out["degraded_reason"] = self.degraded_reason
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Provenance:
        if not isinstance(data, dict) or not isinstance(data.get("model_id"), str) \
                or not isinstance(data.get("tier"), str) or not isinstance(data.get("version"), int | str):
            raise ValueError("provenance needs model_id, version and tier")
        return cls(data["model_id"], data["version"], data["tier"],
                   {k: v for k, v in data.items() if k not in _PROVENANCE_CORE},
                   bool(data.get("degraded", False)), data.get("degraded_reason"))


@dataclass(frozen=True, slots=True)
class Uncertainty:
    std: float | None
    interval: tuple[Any, Any] | None
    method: str
    confidence: float | None = None
    space: str | None = None  # e.g. the members' std is in log10 space

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.std is not None:
            out["std"] = self.std
        out["interval"] = list(self.interval) if self.interval is not None else None
        if self.confidence is not None:
            out["confidence"] = self.confidence
        out["method"] = self.method
        if self.space is not None:
            out["space"] = self.space
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Uncertainty:
        if not isinstance(data, dict):
            raise ValueError("uncertainty must be an object")
        interval = data.get("interval")
        if interval is not None and (not isinstance(interval, list | tuple) or len(interval) != 2):
            raise ValueError("an interval has two ends")
        return cls(data.get("std"), tuple(interval) if interval is not None else None,
                   str(data.get("method", "")), data.get("confidence"), data.get("space"))


@dataclass(frozen=True, slots=True)
class Domain:
    """Applicability domain: nearest training molecule by Tanimoto similarity."""

    max_similarity: float
    in_domain: bool
    threshold: float
    nearest_training_smiles: str | None

    def to_json(self) -> dict[str, Any]:
        return {"max_similarity": self.max_similarity, "in_domain": self.in_domain,
                "threshold": self.threshold, "nearest_training_smiles": self.nearest_training_smiles}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Domain:
        if not isinstance(data, dict):
            raise ValueError("applicability_domain must be an object")
        return cls(data.get("max_similarity"), bool(data.get("in_domain")), data.get("threshold"),
                   data.get("nearest_training_smiles"))


@dataclass(frozen=True, slots=True)
class Answer:
    """One endpoint's answer for one molecule: a value (predicted or computed) or an error."""

    provenance: Provenance
    value: Any = None
    units: str = ""
    kind: str = "predicted"  # predicted | computed
    label: str | None = None  # classification: the label of the value's side of 0.5
    uncertainty: Uncertainty | None = None
    applicability_domain: Domain | None = None
    error: str | None = None
    # Asked for (`explain`): per-atom and per-descriptor contributions to the model's raw output,
    # {"space", "base", "atoms", "descriptors", "raw"} (and "svg" when drawn).
    explanation: dict[str, Any] | None = None
    # What a computed rule or alert found: e.g. {"violations": [...]} or {"alerts": [...]}.
    details: dict[str, Any] | None = None
    # The value's percentile (0-100) within a reference set's predictions for this endpoint.
    reference_percentile: float | None = None

    @property
    def is_error(self) -> bool:
        return self.error is not None

    def degrade(self, reason: str) -> Answer:
        """The same answer, marked as the fallback it is, with the reason."""
        return replace(self, provenance=replace(self.provenance, degraded=True, degraded_reason=reason))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["value"] = self.value
        out["units"] = self.units
        if self.label is not None:
            out["label"] = self.label
        if self.uncertainty is not None:
            out["uncertainty"] = self.uncertainty.to_json()
        out["kind"] = self.kind
        if self.applicability_domain is not None:
            out["applicability_domain"] = self.applicability_domain.to_json()
        if self.details is not None:
            out["details"] = self.details
        if self.reference_percentile is not None:
            out["reference_percentile"] = self.reference_percentile
        if self.explanation is not None:
            out["explanation"] = self.explanation
        out["provenance"] = self.provenance.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any) -> Answer:
        """A worker's answer, checked: ValueError when it is not one."""
        if not isinstance(data, dict) or ("value" not in data and "error" not in data):
            raise ValueError("malformed answer")
        uncertainty = data.get("uncertainty")
        domain = data.get("applicability_domain")
        return cls(
            provenance=Provenance.from_json(data.get("provenance")),
            value=data.get("value"), units=str(data.get("units", "")),
            kind=str(data.get("kind", "predicted")), label=data.get("label"),
            uncertainty=Uncertainty.from_json(uncertainty) if uncertainty is not None else None,
            applicability_domain=Domain.from_json(domain) if domain is not None else None,
            error=data.get("error"), explanation=data.get("explanation"),
            details=data.get("details"), reference_percentile=data.get("reference_percentile"))


def to_json(item: Any) -> Any:
    """orjson's `default` hook: the typed answers serialize themselves."""
    if isinstance(item, Answer | Provenance | Uncertainty | Domain):
        return item.to_json()
    raise TypeError(f"not serializable: {type(item).__name__}")
