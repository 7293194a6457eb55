"""Reference percentiles: where each answer's value falls among the values the same model gives
a reference set of molecules (by default, drugs from the bundled ClinTox data).

Percentile (mid-rank): `100 * (below + equal / 2) / n`, where `below` and `equal` count the
reference molecules whose value (from the same model and version) is lower than, or equal to,
the answer's value, and `n` the reference molecules with a value. A value below every reference
value is 0, above every one 100, and a value equal to all of them 50.

A set's values are computed once per model version and stored with the registry
(`molserve.registry.reference_store`). When the model that answered is not the one the stored
values came from (a newer version was trained, a rule was redefined), this process's fast and
computed tiers recompute them, for every endpoint of the response that needs it in one pass (in
place, or, for a server, in a background thread while answers say the percentile is pending). An
answer from a worker tier (transformer, graph) gets no percentile: its model's values over the
set are not computed here, and the response says so (`reference.omitted`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from rdkit import Chem

from molserve.answers import Answer
from molserve.chem import descriptors
from molserve.chem.molecules import InvalidSmiles, parse_smiles
from molserve.errors import InvalidInput, NotFound
from molserve.prediction.tiers import MoleculeBatch
from molserve.registry.reference_store import ReferenceStore, StoredValues, validate_reference_name

if TYPE_CHECKING:
    from molserve.prediction.router import Router
    from molserve.registry.store import Registry

log = logging.getLogger("molserve.prediction.reference")

PERCENTILE_DEFINITION = ("mid-rank percentile among the reference set's values from the same model "
                         "version: 100 * (below + equal / 2) / n")
LOCAL_TIERS = ("fast", "computed")
_CHUNK = 1000  # molecules a pass through the tiers (bounds the feature matrices' memory)
_EXAMPLES = 5  # invalid records quoted in a set's summary


@dataclass(frozen=True)
class BundledSet:
    """A reference set built from data that ships with molserve (the first use writes it under
    the registry root)."""

    name: str
    description: str
    source: str
    licence: str
    citation: str
    smiles: Callable[[], list[str]]


def _clintox_smiles() -> list[str]:
    from molserve.data.tdc import CATALOG, read_single

    return [row.smiles for row in read_single(CATALOG["clinical_toxicity"])]


CLINTOX_DRUGS = BundledSet(
    "clintox_drugs",
    "Drugs from ClinTox (MoleculeNet, via TDC): molecules approved by the FDA and molecules that "
    "failed clinical trials for toxicity reasons, 1,478 records as bundled. A set of "
    "clinical-stage drugs, not a sample of chemical space; several bundled models were trained "
    "on some of these molecules (clinical_toxicity on all of them).",
    "molserve/data/tdc/extra/clintox.csv (TDC ClinTox, Harvard Dataverse file 4259572)",
    "CC BY 4.0 (TDC); the terms of the original publication apply too",
    "Gayvert KM, Madhukar NS, Elemento O. A data-driven approach to predicting successes and "
    "failures of clinical trials. Cell Chem Biol 2016;23:1294-1301. "
    "doi:10.1016/j.chembiol.2016.07.023. Huang K, et al. Therapeutics Data Commons. NeurIPS "
    "Datasets and Benchmarks 2021. arXiv:2102.09548",
    _clintox_smiles)
BUNDLED_SETS: dict[str, BundledSet] = {CLINTOX_DRUGS.name: CLINTOX_DRUGS}
DEFAULT_REFERENCE = CLINTOX_DRUGS.name


def percentile(sorted_values: np.ndarray, value: float) -> float:
    """Mid-rank percentile of `value` among `sorted_values` (ascending, finite).

    >>> percentile(np.array([1.0, 2.0, 2.0, 3.0]), 2.0)
    50.0
    """
    below = int(np.searchsorted(sorted_values, value, side="left"))
    upto = int(np.searchsorted(sorted_values, value, side="right"))
    return round(100.0 * (below + 0.5 * (upto - below)) / sorted_values.size, 2)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Prepared:
    """A file's SMILES made into a reference set: canonical, distinct, complete structures."""

    smiles: list[str] = field(default_factory=list)
    records: int = 0
    invalid: int = 0
    duplicates: int = 0
    examples: list[str] = field(default_factory=list)  # the first invalid records and why

    def summary(self) -> dict[str, Any]:
        return {"records": self.records, "invalid": self.invalid, "duplicates": self.duplicates,
                "invalid_examples": self.examples}


def prepare(records: Iterable[str]) -> Prepared:
    """Canonical SMILES of the readable records, each once. Unreadable SMILES and structures
    with wildcard atoms (`*`, not a complete molecule) are counted and skipped."""
    out = Prepared()
    seen: set[str] = set()
    for number, text in enumerate(records, start=1):
        out.records += 1
        try:
            parsed = parse_smiles(text)
            if any(atom.GetAtomicNum() == 0 for atom in parsed.mol.GetAtoms()):
                raise InvalidSmiles(text, "a wildcard atom (*) is not a complete structure")
        except InvalidSmiles as error:
            out.invalid += 1
            if len(out.examples) < _EXAMPLES:
                out.examples.append(f"record {number} ({str(text)[:40]!r}): {error.reason}")
            continue
        if parsed.canonical_smiles in seen:
            out.duplicates += 1
            continue
        seen.add(parsed.canonical_smiles)
        out.smiles.append(parsed.canonical_smiles)
    return out


# Which model an answer came from, as far as its reference values are concerned: id, version,
# tier and a stamp (the training date of a fast model, the definition of a computed endpoint),
# so a version number reused after a deletion, or a redefined rule, is not mistaken for the same.
ModelKey = tuple[str, str, str, str]


@lru_cache(maxsize=256)
def _definition(endpoint: str) -> str:
    prop = descriptors.COMPUTED[endpoint]
    return hashlib.sha256(f"{prop.method}\n{prop.description}".encode()).hexdigest()[:16]


def _key_of(endpoint: str, answer: Answer) -> ModelKey:
    prov = answer.provenance
    if prov.tier == "computed" and endpoint in descriptors.COMPUTED:
        stamp = _definition(endpoint)
    else:
        stamp = str(prov.details.get("trained") or "")
    return prov.model_id, str(prov.version), prov.tier, stamp


def _stored_key(stored: StoredValues) -> ModelKey:
    meta = stored.meta
    return (str(meta.get("model_id")), str(meta.get("version")), str(meta.get("tier")),
            str(meta.get("stamp") or ""))


@dataclass(frozen=True)
class _Distribution:
    sorted_values: np.ndarray  # finite values, ascending
    key: ModelKey
    molecules_sha256: str


class ReferenceSets:
    """The reference sets of a registry, and percentiles against them for a router's answers.

    `annotate_response(response, reference)` fills `reference_percentile` in the router's
    assembled response; `add`, `remove` and `list` manage the sets.
    """

    def __init__(self, registry: Registry, router: Router, *,
                 default: str | None = DEFAULT_REFERENCE, background: bool = False) -> None:
        self.registry = registry
        self.router = router
        self.default = default
        # A server sets `background`: values a request finds missing are computed in a thread
        # of their own (seconds for a set of a thousand molecules and every endpoint) while
        # that request is answered without those percentiles, saying why; the CLI and tests
        # compute them in place.
        self.background = background
        self._pending: set[tuple[str, str, str]] = set()  # (set, endpoint, tier) being computed
        self._pending_lock = threading.Lock()  # not the compute lock: held for microseconds
        self._threads: list[threading.Thread] = []  # background computations, joined by `close`
        self._stopping = threading.Event()  # set by `close`: computations end at the next chunk
        self.store = ReferenceStore(registry.root)
        self._compute_lock = threading.Lock()
        self._materialize_lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], _Distribution] = {}  # (set, endpoint, tier)
        self._molecules: dict[str, tuple[str, list[str]]] = {}  # set -> (sha256, SMILES)
        self._unstored: dict[str, tuple[dict[str, Any], list[str]]] = {}  # read-only registry

    # Sets ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self.store.names()) | set(BUNDLED_SETS) | set(self._unstored))

    def info(self, name: str) -> dict[str, Any]:
        """A set's description and counts (a bundled set is written on first use)."""
        validate_reference_name(name)
        if self.store.exists(name):
            return self.store.info(name)
        if name in self._unstored:
            return self._unstored[name][0]
        if name in BUNDLED_SETS:
            return self._materialize(BUNDLED_SETS[name])
        raise NotFound(f"no reference set {name!r}; known: {', '.join(self.names())} "
                       "(molserve reference list, GET /v1/references)",
                       code="unknown_reference", details={"known": self.names()})

    def molecules(self, name: str) -> list[str]:
        info = self.info(name)
        if name in self._unstored:
            return self._unstored[name][1]
        cached = self._molecules.get(name)
        if cached is None or cached[0] != info["molecules_sha256"]:
            cached = (info["molecules_sha256"], self.store.molecules(name))
            self._molecules[name] = cached
        return cached[1]

    def _materialize(self, bundled: BundledSet) -> dict[str, Any]:
        with self._materialize_lock:
            if self.store.exists(bundled.name):
                return self.store.info(bundled.name)
            prepared = prepare(bundled.smiles())
            info = {"description": bundled.description, "source": bundled.source,
                    "licence": bundled.licence, "citation": bundled.citation, "bundled": True,
                    **prepared.summary()}
            try:
                return self.store.write_set(bundled.name, prepared.smiles, info, replace=True)
            except OSError as error:  # a read-only registry: the set lives in memory
                log.warning("reference set %s kept in memory: %s", bundled.name, error)
                sha = hashlib.sha256("\n".join(prepared.smiles).encode()).hexdigest()
                full = {**info, "name": bundled.name, "molecules": len(prepared.smiles),
                        "molecules_sha256": sha}
                self._unstored[bundled.name] = (full, prepared.smiles)
                return full

    def add(self, name: str, records: Iterable[str], *, description: str = "", source: str = "",
            licence: str = "", citation: str = "", replace: bool = False,
            compute: bool = True) -> dict[str, Any]:
        """Store a set from SMILES records (invalid ones counted and skipped); with `compute`,
        predict it now with every endpoint this process serves."""
        validate_reference_name(name)
        if name in BUNDLED_SETS:
            raise InvalidInput(f"{name!r} is the name of a bundled reference set; choose another",
                               code="reference_exists")
        prepared = prepare(records)
        if not prepared.smiles:
            shown = "; ".join(prepared.examples) or "the input is empty"
            raise InvalidInput(f"no valid molecules for reference set {name!r} "
                               f"({prepared.records} records: {shown})", code="empty_reference")
        info = {"description": description, "source": source, "licence": licence,
                "citation": citation, "bundled": False, **prepared.summary()}
        stored = self.store.write_set(name, prepared.smiles, info, replace=replace)
        if compute:
            stored["computed"] = self.refresh(name)
        return stored

    def remove(self, name: str) -> None:
        if name in BUNDLED_SETS:
            raise InvalidInput(f"{name!r} is bundled with molserve and cannot be removed",
                               code="reference_bundled")
        self.store.remove(name)
        self._molecules.pop(name, None)
        for key in [k for k in self._cache if k[0] == name]:
            del self._cache[key]

    def list_sets(self) -> list[dict[str, Any]]:
        """Every set with its size and, per endpoint, the model version its values came from
        and whether that is the version served now."""
        out = []
        for name in self.names():
            info = self.info(name)
            values = []
            for meta in self.store.stored(name):
                current = self._current_key(meta.get("endpoint", ""), meta.get("tier", ""))
                values.append({
                    "endpoint": meta.get("endpoint"), "tier": meta.get("tier"),
                    "model_id": meta.get("model_id"), "version": meta.get("version"),
                    "values": meta.get("values"), "computed": meta.get("computed"),
                    "current": current is not None and current == (
                        str(meta.get("model_id")), str(meta.get("version")), str(meta.get("tier")),
                        str(meta.get("stamp") or ""))})
            out.append({
                "name": name, "default": name == self.default,
                "description": info.get("description", ""), "molecules": info.get("molecules"),
                "records": info.get("records"), "invalid": info.get("invalid"),
                "duplicates": info.get("duplicates"), "source": info.get("source", ""),
                "licence": info.get("licence", ""), "citation": info.get("citation", ""),
                "bundled": bool(info.get("bundled")), "created": info.get("created"),
                "values": values})
        return out

    # Values ----------------------------------------------------------------------------------
    def _current_key(self, endpoint: str, tier: str) -> ModelKey | None:
        """The key of the model this process serves for the endpoint on that tier, if any."""
        if tier == "computed" and endpoint in self.router.computed.served():
            prov = descriptors.provenance(endpoint)
            return prov["model_id"], str(prov["version"]), "computed", _definition(endpoint)
        if tier == "fast" and endpoint in self.router.fast.models:
            prov = self.router.fast.models[endpoint].provenance()
            return prov["model_id"], str(prov["version"]), "fast", str(prov.get("trained") or "")
        return None

    def refresh(self, name: str, endpoints: list[str] | None = None) -> list[str]:
        """Compute and store the set's values for the endpoints (default: every endpoint this
        process serves, fast and computed) whose stored values are missing or stale; the
        endpoints computed."""
        info = self.info(name)
        names = endpoints if endpoints is not None else [
            *self.router.fast.endpoints(),
            *(e for e in self.router.computed.endpoints() if descriptors.COMPUTED[e].numeric)]
        wanted: dict[tuple[str, str], ModelKey] = {}
        for endpoint in names:
            tier = "fast" if endpoint in self.router.fast.models else "computed"
            key = self._current_key(endpoint, tier)
            if key is None:
                raise NotFound(f"this process serves no endpoint {endpoint!r}",
                               code="unknown_endpoint")
            if self._distribution(name, info, endpoint, key) is None:
                wanted[(endpoint, tier)] = key
        self._compute(name, info, wanted)
        return sorted(endpoint for endpoint, _ in wanted)

    def _distribution(self, name: str, info: dict[str, Any], endpoint: str,
                      key: ModelKey) -> _Distribution | None:
        """The values of the set from the model `key`, if held in memory or stored."""
        tier = key[2]
        cached = self._cache.get((name, endpoint, tier))
        if cached is not None and cached.key == key and cached.molecules_sha256 == info["molecules_sha256"]:
            return cached
        stored = self.store.read_values(name, endpoint, tier)
        if stored is None or _stored_key(stored) != key \
                or stored.meta.get("molecules_sha256") != info["molecules_sha256"]:
            return None
        values = stored.values[np.isfinite(stored.values)]
        distribution = _Distribution(np.sort(values), key, info["molecules_sha256"])
        self._cache[(name, endpoint, tier)] = distribution
        return distribution

    def _compute(self, name: str, info: dict[str, Any],
                 wanted: dict[tuple[str, str], ModelKey]) -> None:
        """Predict the set with this process's tiers for the wanted (endpoint, tier) pairs, all
        endpoints of a tier in one pass, and store the values."""
        if not wanted:
            return
        with self._compute_lock:
            # Another request may have computed them while this one waited.
            wanted = {pair: key for pair, key in wanted.items()
                      if self._distribution(name, info, pair[0], key) is None}
            if not wanted:
                return
            smiles = self.molecules(name)
            by_tier: dict[str, list[str]] = {}
            for endpoint, tier in wanted:
                by_tier.setdefault(tier, []).append(endpoint)
            values = {pair: np.full(len(smiles), np.nan) for pair in wanted}
            answered_by: dict[tuple[str, str], ModelKey] = {}
            for start in range(0, len(smiles), _CHUNK):
                if self._stopping.is_set():  # the server is stopping: nothing is stored
                    return
                # A stored canonical SMILES reads back (RDKit writes what it can read); one that
                # did not would keep NaN, not stop the set.
                read = [(row, smiles[row], Chem.MolFromSmiles(smiles[row]))
                        for row in range(start, min(start + _CHUNK, len(smiles)))]
                read = [(row, text, mol) for row, text, mol in read if mol is not None]
                rows = [row for row, _, _ in read]
                batch = MoleculeBatch([s for _, s, _ in read], [mol for _, _, mol in read])
                for tier, endpoints in by_tier.items():
                    batch.wanted = frozenset(endpoints)
                    source = self.router.fast if tier == "fast" else self.router.computed
                    for endpoint in endpoints:
                        for row, answer in zip(rows, source.answer(batch, endpoint), strict=True):
                            if not answer.is_error and _numeric(answer.value):
                                values[(endpoint, tier)][row] = answer.value
                                answered_by.setdefault((endpoint, tier), _key_of(endpoint, answer))
            for (endpoint, tier), array in values.items():
                key = answered_by.get((endpoint, tier), wanted[(endpoint, tier)])
                meta = {"model_id": key[0], "version": key[1], "stamp": key[3],
                        "molecules_sha256": info["molecules_sha256"],
                        "values": int(np.isfinite(array).sum()), "molecules": len(smiles)}
                if name not in self._unstored:
                    try:
                        self.store.write_values(name, endpoint, tier, array, meta)
                    except OSError as error:  # read-only registry: kept in memory only
                        log.warning("reference values of %s/%s not stored: %s", name, endpoint, error)
                self._cache[(name, endpoint, tier)] = _Distribution(
                    np.sort(array[np.isfinite(array)]), key, info["molecules_sha256"])

    # Percentiles -----------------------------------------------------------------------------
    def annotate_response(self, response: dict[str, Any], reference: str | None) -> None:
        """Set `reference_percentile` on every numeric answer of the router's response (error
        answers untouched) against the named set, or the default one; add
        `response["reference"]` (the set, its size, the definition, and the endpoints left
        without a percentile and why). An unknown name raises NotFound naming the known ones."""
        name = reference or self.default
        if name is None:
            return
        info = self.info(name)
        results = response.get("results", [])
        needed: dict[tuple[str, str], ModelKey] = {}
        keys: dict[int, ModelKey] = {}  # id(answer) -> its model's key
        omitted: dict[str, str] = {}
        for result in results:
            for endpoint, answer in result["predictions"].items():
                if answer.is_error:
                    continue
                if not _numeric(answer.value):
                    omitted.setdefault(endpoint, "its values are not numbers")
                    continue
                key = keys.get(id(answer))
                if key is None:
                    key = keys[id(answer)] = _key_of(endpoint, answer)
                needed.setdefault((endpoint, key[2]), key)
        distributions: dict[tuple[str, str], _Distribution] = {}
        missing: dict[tuple[str, str], ModelKey] = {}
        for (endpoint, tier), key in needed.items():
            found = self._distribution(name, info, endpoint, key)
            if found is not None:
                distributions[(endpoint, tier)] = found
            elif tier not in LOCAL_TIERS:
                omitted[endpoint] = (f"the {tier} tier answered, and reference values are computed "
                                     "by this process's fast and computed tiers only")
            elif self._current_key(endpoint, tier) != key:
                omitted[endpoint] = (f"{key[0]} v{key[1]} answered but v{self._served(endpoint, tier)} "
                                     "is served now; reference values follow the served version")
            else:
                missing[(endpoint, tier)] = key
        if missing and self.background:
            self._compute_later(name, info, missing)
            for endpoint, _tier in missing:
                omitted[endpoint] = ("the reference set's values for the served model version are "
                                     "being computed; percentiles follow within a minute")
        elif missing:
            self._compute(name, info, missing)
            for pair, key in missing.items():
                found = self._distribution(name, info, pair[0], key)
                if found is not None:
                    distributions[pair] = found
        # One searchsorted per endpoint over all its answers; the same answer object (a
        # duplicate input) is replaced once and shared again.
        placed: dict[tuple[str, str], list[Answer]] = {}
        for result in results:
            for endpoint, answer in result["predictions"].items():
                key = keys.get(id(answer))
                found = distributions.get((endpoint, key[2])) if key is not None else None
                if found is None or found.key != key:
                    continue
                if found.sorted_values.size == 0:
                    omitted[endpoint] = "no molecule of the reference set has a value"
                    continue
                placed.setdefault((endpoint, key[2]), []).append(answer)
        annotated: dict[int, Answer] = {}
        for pair, answers in placed.items():
            reference_values = distributions[pair].sorted_values
            unique = list({id(a): a for a in answers}.values())
            values = np.array([a.value for a in unique], dtype=np.float64)
            below = np.searchsorted(reference_values, values, side="left")
            upto = np.searchsorted(reference_values, values, side="right")
            ranks = np.round(100.0 * (below + 0.5 * (upto - below)) / reference_values.size, 2)
            for answer, rank in zip(unique, ranks.tolist(), strict=True):
                annotated[id(answer)] = replace(answer, reference_percentile=rank)
        for result in results:
            predictions = result["predictions"]
            for endpoint, answer in predictions.items():
                if id(answer) in annotated:
                    predictions[endpoint] = annotated[id(answer)]
        response["reference"] = {
            "name": name, "description": info.get("description", ""),
            "molecules": info.get("molecules"), "percentile": PERCENTILE_DEFINITION,
            **({"omitted": omitted} if omitted else {})}

    def _compute_later(self, name: str, info: dict[str, Any],
                       missing: dict[tuple[str, str], ModelKey]) -> None:
        with self._pending_lock:
            todo = {pair: key for pair, key in missing.items() if (name, *pair) not in self._pending}
            self._pending.update((name, *pair) for pair in todo)
        if not todo:
            return

        def run() -> None:
            try:
                self._compute(name, info, todo)
            except Exception:  # a background failure is logged; the next request tries again
                log.exception("reference values of %s could not be computed", name)
            finally:
                with self._pending_lock:
                    self._pending.difference_update((name, *pair) for pair in todo)

        self._start(run, f"reference-{name}")

    def warm(self, name: str | None = None) -> None:
        """Compute the missing or stale values of a set (default: the default set) for every
        endpoint served, in the background; a server calls this after loading models."""
        name = name or self.default
        if name is None:
            return

        def run() -> None:
            try:
                self.refresh(name)
            except Exception:
                log.exception("reference set %s could not be warmed", name)

        self._start(run, f"reference-warm-{name}")

    def _start(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background computations at their next chunk and wait for them (a server
        stopping): a process that exits with one inside RDKit's C++ code is aborted (exit 134)
        instead of ending cleanly."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _served(self, endpoint: str, tier: str) -> str:
        current = self._current_key(endpoint, tier)
        return current[1] if current is not None else "none"
