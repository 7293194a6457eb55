"""Datasets, as every face asks for them: a user's CSV/TSV/SDF file curated into the dataset store
(optionally converting IC50 in nM to pIC50), a ChEMBL target fetched and curated, the catalogue of
TDC datasets molserve serves, and TDC's own files downloaded and verified.

Functions here raise `molserve.errors` on bad input (a missing file, a missing column, an unknown
target) and import RDKit, httpx and the curation code only when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from molserve.errors import InvalidInput, MolserveError, NotFound, Unavailable

if TYPE_CHECKING:
    from molserve.data.tdc import SourceFile, TdcEndpoint
    from molserve.registry.store import Artifact


def ic50_nm_to_pic50(smiles: Iterable[str], ic50_nm: Iterable[float]) -> tuple[list[str], list[float], int]:
    """pIC50 = 9 - log10(IC50 / nM) per molecule; an IC50 that is zero or negative has no
    logarithm, so its molecule is dropped. Returns the kept SMILES, their pIC50 and how many
    were dropped."""
    kept_smiles: list[str] = []
    kept: list[float] = []
    dropped = 0
    for s, value in zip(smiles, ic50_nm, strict=True):
        if value > 0:
            kept_smiles.append(s)
            kept.append(9 - math.log10(value))
        else:
            dropped += 1
    return kept_smiles, kept, dropped


def import_table(datasets: Path, path: Path, *, name: str, label_col: str, smiles_col: str = "smiles",
                 task: str = "regression", units: str = "", description: str | None = None,
                 positive_label: str | None = None, licence: str = "user-supplied",
                 ic50_nm: bool = False, canonical_tautomer: bool = False,
                 public: bool = False) -> Artifact:
    """Curate a user's CSV/TSV/SDF file (standardized structures, replicates merged) into the
    store at `datasets` as dataset `name` (`public`: any key may screen and train on it over
    HTTP; otherwise admin keys only). With `ic50_nm` the labels are IC50 in nM and are stored
    as pIC50; the curation report then counts the values dropped as non-positive
    (`ic50_non_positive_dropped`)."""
    from molserve.data.curation import curate
    from molserve.data.dataset import load_table
    from molserve.data.store import DatasetStore
    from molserve.registry.store import validate_endpoint_name

    validate_endpoint_name(name)  # before curation, which can take minutes on a large file
    if not Path(path).is_file():
        raise NotFound(f"no such file: {path}")
    if ic50_nm and task != "regression":
        raise InvalidInput("IC50 values are a regression label: drop --task classification")
    try:
        raw = load_table(path, smiles_col=smiles_col, label_col=label_col, task=task, name=name,
                         units=units, positive_label=positive_label)
    except MolserveError:
        raise
    except ValueError as error:  # a missing column, an unreadable label, an unknown file type
        raise InvalidInput(str(error)) from None
    dropped = 0
    if ic50_nm:
        raw.smiles, raw.labels, dropped = ic50_nm_to_pic50(raw.smiles, raw.labels)
        if not raw.smiles:
            raise InvalidInput(f"no positive IC50 value in column {label_col!r} of {Path(path).name} "
                               f"({dropped} zero or negative); are these IC50s in nM?")
        raw.units = "pIC50"
    curated = curate(raw, standardize_structures=True, canonical_tautomer=canonical_tautomer)
    rows = [{"canonical_smiles": s, "label": float(y), "n_measurements": 1, "spread": 0.0}
            for s, y in zip(curated.canonical_smiles, curated.labels, strict=True)]
    curation = {**curated.report, "source_sha256": raw.checksum, "converted_from_ic50_nm": ic50_nm}
    if ic50_nm:
        curation["ic50_non_positive_dropped"] = dropped
    try:
        return DatasetStore(datasets).save(
            name, rows, task=raw.task, units=raw.units,
            description=description or f"imported from {Path(path).name}", source=raw.source,
            licence=licence, curation=curation, extra={"public": public})
    except MolserveError:
        raise
    except ValueError as error:  # nothing survived curation
        raise InvalidInput(f"{Path(path).name}: {error}") from None


def fetch_chembl(datasets: Path, target: str, *, standard_type: str = "IC50",
                 base_url: str = "https://www.ebi.ac.uk", canonical_tautomer: bool = False,
                 client=None, public: bool = False) -> Artifact:
    """Fetch a target's binding activities from ChEMBL, curate them and store
    `chembl_<target>_p<type>`. `target` is a known short name (EGFR, ...) or a CHEMBL id;
    `client` is a ChemblClient (tests pass one with a recorded transport)."""
    from molserve.data.chembl import ChemblClient, resolve_target
    from molserve.data.store import DatasetStore, fetch_chembl_dataset

    try:
        resolve_target(target)  # an unknown name is refused before any request
    except MolserveError:
        raise
    except ValueError as error:
        raise NotFound(str(error), code="unknown_target") from None
    client = client or ChemblClient(base_url=base_url)
    try:
        return fetch_chembl_dataset(DatasetStore(datasets), target, standard_type=standard_type,
                                    client=client, canonical_tautomer=canonical_tautomer,
                                    public=public)
    except MolserveError:
        raise
    except ValueError as error:  # no activities of that type for the target
        raise NotFound(str(error), code="no_activities") from None


def tdc_catalogue() -> list[TdcEndpoint]:
    """The TDC datasets molserve serves as endpoints, in catalogue order."""
    from molserve.data import tdc

    return list(tdc.CATALOG.values())


def tdc_files() -> list[SourceFile]:
    """TDC's own files behind the catalogue: the ADMET benchmark group and the single datasets."""
    from molserve.data import tdc

    return [tdc.ADMET_GROUP, *tdc.SINGLE_FILES.values()]


def fetch_tdc(cache: Path | None = None, *,
              on_file: Callable[[SourceFile, Path], None] | None = None) -> list[Path]:
    """Download TDC's files from Harvard Dataverse into `cache` (default ~/.cache/molserve/tdc),
    each verified against its pinned checksums (a cached copy that matches is reused)."""
    import httpx

    from molserve.data import tdc

    if cache is not None and cache.exists() and not cache.is_dir():
        raise InvalidInput(f"the TDC cache {cache} is a file; name a directory")
    paths = []
    for source in tdc_files():
        try:
            path = tdc.fetch(source, cache)
        except httpx.HTTPError as error:
            raise Unavailable(f"could not download {source.name} from {source.url}: {error}; "
                              "check the network and retry (verified files are kept)") from None
        if on_file is not None:
            on_file(source, path)
        paths.append(path)
    return paths
