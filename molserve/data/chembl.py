"""Bioactivity datasets from ChEMBL's REST API: fetch (paged, retried, rate-limited), curate,
aggregate, split.

Assay filters (documented choices): binding assays (`assay_type=B`), one activity type (IC50 by
default), exact measurements only (`standard_relation` '='), values in nM, no ChEMBL data
validity comment, not flagged as a potential duplicate. pIC50 is ChEMBL's pChEMBL value when
given, else 9 - log10(IC50 in nM). Replicates per canonical structure are merged by median and
their spread reported.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from molserve.chem.molecules import InvalidSmiles, parse_smiles
from molserve.data.standardize import standardize
from molserve.errors import MolserveError

BASE_URL = "https://www.ebi.ac.uk"
API_ROOT = "/chembl/api/data"
LICENCE = "CC BY-SA 3.0 (ChEMBL)"

KNOWN_TARGETS = {
    "EGFR": "CHEMBL203",
    "BRAF": "CHEMBL5145",
    "CDK2": "CHEMBL301",
    "PARP1": "CHEMBL3105",
    "VEGFR2": "CHEMBL279",
    "BCL2": "CHEMBL4860",
}


class ChemblError(MolserveError, RuntimeError):
    """ChEMBL could not be reached or answered something unusable."""

    code = "chembl_error"


def resolve_target(name: str) -> tuple[str, str]:
    """(ChEMBL target id, short name) for a known name or any CHEMBL id.

    >>> resolve_target("egfr")
    ('CHEMBL203', 'egfr')
    """
    text = name.strip()
    if re.fullmatch(r"CHEMBL\d+", text, flags=re.IGNORECASE):
        chembl_id = text.upper()
        short = next((k for k, v in KNOWN_TARGETS.items() if v == chembl_id), chembl_id)
        return chembl_id, short.lower()
    if text.upper() in KNOWN_TARGETS:
        return KNOWN_TARGETS[text.upper()], text.lower()
    known = ", ".join(f"{k} ({v})" for k, v in KNOWN_TARGETS.items())
    raise ValueError(f"unknown target {name!r}; known names: {known}; or give any ChEMBL target id "
                     "such as CHEMBL203")


class ChemblClient:
    """A polite client: at most `rate_per_s` requests a second, retries with backoff on
    timeouts, 429 and 5xx (honouring Retry-After), pages through `page_meta.next`."""

    def __init__(self, base_url: str = BASE_URL, *, transport: httpx.BaseTransport | None = None,
                 rate_per_s: float = 3.0, retries: int = 4, timeout_s: float = 30.0,
                 sleep=time.sleep) -> None:
        self.client = httpx.Client(base_url=base_url, transport=transport, timeout=timeout_s,
                                   headers={"accept": "application/json",
                                            "user-agent": "molserve (ChEMBL dataset builder)"})
        self.min_interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self.retries = retries
        self.sleep = sleep
        self._last = 0.0
        self.requests = 0

    def get(self, path: str, params: dict | None = None) -> dict[str, Any]:
        last_error = ""
        for attempt in range(self.retries + 1):
            wait = self.min_interval - (time.monotonic() - self._last)
            if wait > 0:
                self.sleep(wait)
            self._last = time.monotonic()
            self.requests += 1
            try:
                response = self.client.get(path, params=params)
            except httpx.TransportError as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        last_error = "response was not JSON"
                elif response.status_code == 404:
                    raise ChemblError(f"ChEMBL has no {path}")
                elif response.status_code in (429, 500, 502, 503, 504):
                    last_error = f"HTTP {response.status_code}"
                    retry_after = response.headers.get("retry-after", "")
                    if retry_after.isdigit():
                        self.sleep(min(60, int(retry_after)))
                else:
                    raise ChemblError(f"ChEMBL answered HTTP {response.status_code} for {path}")
            if attempt < self.retries:
                self.sleep(min(30.0, 0.5 * 2**attempt))
        raise ChemblError(f"ChEMBL could not be reached for {path} after {self.retries + 1} "
                          f"attempts ({last_error}); nothing was written")

    def target(self, chembl_id: str) -> dict[str, Any]:
        return self.get(f"{API_ROOT}/target/{chembl_id}.json")

    def activities(self, target_id: str, standard_type: str = "IC50", assay_type: str = "B",
                   page_size: int = 1000) -> Iterator[dict[str, Any]]:
        params: dict | None = {"target_chembl_id": target_id, "standard_type": standard_type,
                               "assay_type": assay_type, "limit": page_size, "offset": 0}
        path = f"{API_ROOT}/activity.json"
        while path:
            page = self.get(path, params)
            yield from page.get("activities", [])
            following = (page.get("page_meta") or {}).get("next")
            path, params = (following, None) if following else ("", None)


@dataclass
class CuratedActivities:
    rows: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def curate_activities(records: list[dict[str, Any]], *, canonical_tautomer: bool = False,
                      noisy_spread: float = 1.0) -> CuratedActivities:
    """Filter, convert to pIC50, standardize structures and merge replicates."""
    dropped: Counter[str] = Counter()
    grouped: dict[str, list[float]] = defaultdict(list)
    years: dict[str, int] = {}
    for record in records:
        if record.get("standard_relation") != "=":
            dropped["relation is not '=' (censored value)"] += 1
            continue
        if record.get("data_validity_comment"):
            dropped[f"data validity comment: {record['data_validity_comment']}"] += 1
            continue
        if record.get("potential_duplicate") in (1, "1", True):
            dropped["flagged as a potential duplicate of another publication"] += 1
            continue
        pchembl = _number(record.get("pchembl_value"))
        if pchembl is None:
            value = _number(record.get("standard_value"))
            if record.get("standard_units") != "nM":
                dropped[f"units {record.get('standard_units')!r}, not nM"] += 1
                continue
            if value is None or value <= 0:
                dropped["no positive value"] += 1
                continue
            pchembl = 9.0 - math.log10(value)
        smiles = record.get("canonical_smiles")
        if not smiles:
            dropped["no structure"] += 1
            continue
        try:
            parent = standardize(parse_smiles(smiles).mol, canonical_tautomer)
        except (InvalidSmiles, ValueError, RuntimeError) as error:
            dropped[f"unparsable structure: {str(error)[:60]}"] += 1
            continue
        from rdkit import Chem

        key = Chem.MolToSmiles(parent)
        grouped[key].append(pchembl)
        year = record.get("document_year")
        if isinstance(year, int):
            years[key] = min(year, years.get(key, year))
    rows = []
    noisy = 0
    for key, values in grouped.items():
        spread = max(values) - min(values)
        noisy += spread > noisy_spread
        rows.append({"canonical_smiles": key, "label": float(np.median(values)),
                     "n_measurements": len(values), "spread": round(spread, 4),
                     "noisy": spread > noisy_spread, "year": years.get(key)})
    report = {
        "records_in": len(records),
        "dropped": dict(dropped.most_common()),
        "measurements_kept": sum(len(v) for v in grouped.values()),
        "duplicates_merged": sum(len(v) - 1 for v in grouped.values()),
        "noisy_groups": noisy,
        "noisy_rule": f"replicate spread > {noisy_spread} log units (kept, median used)",
        "rows_out": len(rows),
        "filters": "assay_type=B; standard_relation '='; nM; no data_validity_comment; "
                   "potential_duplicate != 1; pIC50 = pchembl_value or 9 - log10(IC50 nM)",
        "standardization": "MolStandardize cleanup, largest organic fragment, uncharge"
                           + (", canonical tautomer" if canonical_tautomer else ""),
    }
    return CuratedActivities(rows, report)
