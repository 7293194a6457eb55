"""The Therapeutics Data Commons (TDC) ADMET datasets that molserve bundles as endpoints.

Forty datasets: the 22 of TDC's ADMET benchmark group (with TDC's fixed train_val/test files)
and 18 further TDC classification sets (CYP1A2 and CYP2C19 inhibition, hERG (Karim), ClinTox,
carcinogenicity, skin reaction and the 12 Tox21 assays). Copies ship inside the package
(`molserve/data/tdc/`, checksums below and in its README); `fetch` downloads TDC's own files
from Harvard Dataverse, verifies them and caches them, for anyone who wants the data from the
source. Both copies are read by the same functions.

TDC distributes these datasets under CC BY 4.0; cite TDC (Huang et al. 2021) and each
dataset's original publication (`TdcEndpoint.citation`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from molserve.data.dataset import Dataset
from molserve.errors import MolserveError

BUNDLED_DIR = Path(__file__).parent / "tdc"
DATAVERSE_URL = "https://dataverse.harvard.edu/api/access/datafile/{file_id}"
TDC_CITATION = ("Huang K, Fu T, Gao W, et al. Therapeutics Data Commons: Machine Learning Datasets "
                "and Tasks for Drug Discovery and Development. NeurIPS Datasets and Benchmarks 2021. "
                "arXiv:2102.09548")
LICENCE = "CC BY 4.0 (Therapeutics Data Commons); cite TDC and the original publication"


@dataclass(frozen=True)
class SourceFile:
    """One file as TDC serves it from Harvard Dataverse, with the digests it must match."""

    file_id: int
    name: str
    sha256: str | None = None
    md5: str | None = None
    note: str = ""

    @property
    def url(self) -> str:
        return DATAVERSE_URL.format(file_id=self.file_id)


ADMET_GROUP = SourceFile(4426004, "admet_group.zip",
                         sha256="bd0005246cb6f1672333c28ad202112a8bf071ab65d847848715030308faf1f1",
                         md5="e3e4dda2f7f62268448fc813ceefccd5")
# TDC's single-instance files (tab-separated). Digests: sha256 of the file as TDC serves it where a
# copy of those bytes was available, else the MD5 other projects pin for the same download.
SINGLE_FILES = {
    "cyp1a2_veith": SourceFile(4259573, "cyp1a2_veith.tab",
                               sha256="a18b335832495d4cfa4ecffccf7cdfa12eb08e84b6703aebcc25564e5f21553e",
                               md5="ab58d48970ff880fd5a03f3f6eaadb76"),
    "cyp2c19_veith": SourceFile(4259576, "cyp2c19_veith.tab",
                                sha256="8cf4c9cde4b7693ab37ceeb66efdcc8b05b8848d33f06255d52ba7e6db754ebc",
                                md5="fe0c4420effb5df2417fa9c9a2ba07ae"),
    "clintox": SourceFile(4259572, "clintox.tab",
                          sha256="6dbb8ee35b64f9efca4cac6de32183c82264a1195de10a1cb2b4a35b4b2e4d21",
                          md5="e8e7c5ba675129db0161913ba4871834"),
    "carcinogens_lagunin": SourceFile(
        4259570, "carcinogens_lagunin.tab",
        sha256="fe057a144d31a5883c0d9902173c4d208b9af826670d47d4ed0eeabf798fc160"),
    "herg_karim": SourceFile(6822246, "herg_karim.tab",
                             sha256="b47cbff0d65bbb5c6ade5ecd4c5bab20158c6cbf631a68f355efbe7e5fafc099"),
    "skin_reaction": SourceFile(
        4259609, "skin_reaction.tab",
        sha256="95869192c2b252cf57eee429bff37a1f0b736f0ecec8f40799f05fb03dcee537",
        note="reconstructed from a public copy; no independent checksum was published"),
    "tox21": SourceFile(4259612, "tox21.tab", md5="6f926279d60d413f0524894fdcb9ba5e",
                        note="one file with a column per assay"),
}

# sha256 of the copies bundled in molserve/data/tdc/ (checked when read).
BUNDLED_SHA256 = {
    "admet_group.zip": "bd0005246cb6f1672333c28ad202112a8bf071ab65d847848715030308faf1f1",
    "extra/carcinogens_lagunin.csv": "3087c1348ecc87068c5c22f2b8289dbceec9cbb9bcccdf7dbf107ef457d9d84c",
    "extra/clintox.csv": "32f8542b5ed007ca76506b7dbdaaed32c9bbe864ea1ce52d4d49f176d5c63455",
    "extra/cyp1a2_veith.csv": "222c06b5503d88aac1f74765587035b93028299fc89d011923886abb27349a9b",
    "extra/cyp2c19_veith.csv": "53407bd5b4d126b26c5201ecceaf35b4fc4b43a3d31ee1f67f3629587d032d13",
    "extra/herg_karim.csv": "cb99a0d6a38d7938043f0f5f840a258e3c072db911708b4c232c95e1a4a33239",
    "extra/skin_reaction.csv": "da2bd72894b8a0faee084bfc7f3881bd505f517121ec22551e01f52bea071889",
    "extra/tox21_NR-AR-LBD.csv": "cca9f63218bb4bad81ea7047495e532f13384cb8604e9e3184492c547beff487",
    "extra/tox21_NR-AR.csv": "5ffdae6b598934ba7593b19c4c0366d1182a86e513ce4d4204557c17b11b04cf",
    "extra/tox21_NR-AhR.csv": "691a726bd6b3a7a4f3e9fac12eb69e36134560077f35c379441e03e706d5a9cd",
    "extra/tox21_NR-Aromatase.csv": "e97168650237f14820923969a6b9c2f29bacf011a32da49821133802cbfed815",
    "extra/tox21_NR-ER-LBD.csv": "6688782511bf2588365173ce791ae934f9d8e48e8449ef5e1f70d1b6fc3a0fa1",
    "extra/tox21_NR-ER.csv": "7176d3d6d77b944b5261cfeeb991bb96588d9edcea7ee163b7ba754436c03fb7",
    "extra/tox21_NR-PPAR-gamma.csv": "8e7c3eddfd24522e7972bf4f2ff205058b224138f4a8612ac0a3e6ad45b180cd",
    "extra/tox21_SR-ARE.csv": "35b57e5d381e01f6fd30e697c93aef7b26335fa84b0987a1182b5a7ae06c8fd9",
    "extra/tox21_SR-ATAD5.csv": "6f054ce4dfe865836a283fd1ab3a44b16d8160f037db5f13e3def657e6fd9bda",
    "extra/tox21_SR-HSE.csv": "557d5296cd6adef9d5a35a59a3f63e3e69222af137022aacd70dea8983c39739",
    "extra/tox21_SR-MMP.csv": "67c09bb0aa72139ec0105e119a3fd822802ae784b3909876e81affd07d5e923f",
    "extra/tox21_SR-p53.csv": "1a4f2c04124100159a4d44b4b93c20fb7c4149b809449887417b8a33a1814813",
}


@dataclass(frozen=True)
class TdcEndpoint:
    """A molserve endpoint made from one TDC dataset."""

    endpoint: str
    tdc_name: str  # TDC's own name, as in `tdc.single_pred` / the leaderboard
    key: str  # admet_group folder, single-file key, or tox21 assay column
    group: str  # "admet_group" (benchmark: fixed train_val/test) or "single"
    task: str
    units: str
    description: str
    citation: str
    metric: str = ""  # the leaderboard's metric (benchmark group only)
    label_names: tuple[str, str] | None = None
    log_target: bool = False  # skewed positive target: modelled as log10, answered in `units`

    @property
    def rows(self) -> int:
        return DATASET_ROWS[self.key]

    @property
    def benchmark(self) -> bool:
        return self.group == "admet_group"

    @property
    def source_file(self) -> SourceFile:
        if self.benchmark:
            return ADMET_GROUP
        return SINGLE_FILES["tox21" if self.key.startswith("tox21:") else self.key]

    @property
    def bundled_path(self) -> str:
        if self.benchmark:
            return "admet_group.zip"
        if self.key.startswith("tox21:"):
            return f"extra/tox21_{self.key.split(':', 1)[1]}.csv"
        return f"extra/{self.key}.csv"


# Rows per dataset (train_val + test for the benchmark group), to train small datasets first.
DATASET_ROWS = {
    "caco2_wang": 910, "hia_hou": 578, "pgp_broccatelli": 1218, "bioavailability_ma": 640,
    "lipophilicity_astrazeneca": 4200, "solubility_aqsoldb": 9982, "bbb_martins": 2030,
    "ppbr_az": 2790, "vdss_lombardo": 1130, "cyp2c9_veith": 12092, "cyp2d6_veith": 13130,
    "cyp3a4_veith": 12328, "cyp2c9_substrate_carbonmangels": 669,
    "cyp2d6_substrate_carbonmangels": 667, "cyp3a4_substrate_carbonmangels": 670,
    "half_life_obach": 667, "clearance_hepatocyte_az": 1213, "clearance_microsome_az": 1102,
    "ld50_zhu": 7385, "herg": 655, "ames": 7278, "dili": 475,
    # the other datasets, as bundled
    "cyp1a2_veith": 12579, "cyp2c19_veith": 12665, "herg_karim": 13445, "clintox": 1478,
    "carcinogens_lagunin": 280, "skin_reaction": 404, "tox21:NR-AR": 7265,
    "tox21:NR-AR-LBD": 6758, "tox21:NR-AhR": 6549, "tox21:NR-Aromatase": 5821,
    "tox21:NR-ER": 6193, "tox21:NR-ER-LBD": 6955, "tox21:NR-PPAR-gamma": 6450,
    "tox21:SR-ARE": 5832, "tox21:SR-ATAD5": 7072, "tox21:SR-HSE": 6467, "tox21:SR-MMP": 5810,
    "tox21:SR-p53": 6774,
}


def _c(endpoint, tdc_name, key, task, units, description, citation, metric="", labels=None,
       log_target=False, group="admet_group") -> TdcEndpoint:
    return TdcEndpoint(endpoint, tdc_name, key, group, task, units, description, citation, metric,
                       labels, log_target)


_VEITH = ("Veith H, Southall N, Huang R, et al. Comprehensive characterization of cytochrome P450 "
          "isozyme selectivity across chemical libraries. Nat Biotechnol 2009;27:1050-1055. "
          "doi:10.1038/nbt.1581 (PubChem AID 1851)")
_CARBON_MANGELS = ("Carbon-Mangels M, Hutter MC. Selecting relevant descriptors for classification by "
                   "Bayesian estimates. Mol Inform 2011;30:885-895. doi:10.1002/minf.201100069")
_AZ = ("AstraZeneca. Experimental in vitro DMPK and physicochemical data on a set of publicly "
       "disclosed compounds. ChEMBL deposited data set CHEMBL3301361. doi:10.6019/CHEMBL3301361")
_TOX21 = ("Tox21 Data Challenge 2014 (NIH/NCATS, EPA, NTP), via MoleculeNet: Wu Z, Ramsundar B, "
          "Feinberg EN, et al. MoleculeNet. Chem Sci 2018;9:513-530. doi:10.1039/C7SC02664A; "
          "Huang R, Xia M. Front Environ Sci 2017;5:3. doi:10.3389/fenvs.2017.00003")
_NEG_POS = ("negative", "positive")

_TOX21_ASSAYS = {
    "NR-AR": "androgen receptor (full length), agonist",
    "NR-AR-LBD": "androgen receptor ligand-binding domain, agonist",
    "NR-AhR": "aryl hydrocarbon receptor, agonist",
    "NR-Aromatase": "aromatase inhibition",
    "NR-ER": "estrogen receptor alpha (full length), agonist",
    "NR-ER-LBD": "estrogen receptor alpha ligand-binding domain, agonist",
    "NR-PPAR-gamma": "PPAR-gamma, agonist",
    "SR-ARE": "antioxidant response element (Nrf2/ARE) stress response",
    "SR-ATAD5": "ATAD5 genotoxicity stress response",
    "SR-HSE": "heat shock factor response element",
    "SR-MMP": "mitochondrial membrane potential disruption",
    "SR-p53": "p53 DNA-damage stress response",
}

CATALOG: dict[str, TdcEndpoint] = {e.endpoint: e for e in [
    # Absorption
    _c("caco2_permeability", "Caco2_Wang", "caco2_wang", "regression", "log10(cm/s)",
       "Caco-2 cell effective permeability, log10 Papp (cm/s).",
       "Wang N-N, Dong J, Deng Y-H, et al. ADME properties evaluation in drug discovery: prediction "
       "of Caco-2 cell permeability. J Chem Inf Model 2016;56:763-773. doi:10.1021/acs.jcim.5b00642",
       "mae"),
    _c("human_intestinal_absorption", "HIA_Hou", "hia_hou", "classification",
       "probability of HIA+", "Human intestinal absorption: absorbed (HIA+) or not.",
       "Hou T, Wang J, Zhang W, Xu X. ADME evaluation in drug discovery. 7. Prediction of oral "
       "absorption. J Chem Inf Model 2007;47:208-218. doi:10.1021/ci600343x",
       "roc-auc", ("HIA-", "HIA+")),
    _c("pgp_inhibition", "Pgp_Broccatelli", "pgp_broccatelli", "classification",
       "probability of inhibitor", "P-glycoprotein (ABCB1) inhibition.",
       "Broccatelli F, Carosati E, Neri A, et al. A novel approach for predicting P-glycoprotein "
       "(ABCB1) inhibition using molecular interaction fields. J Med Chem 2011;54:1740-1751. "
       "doi:10.1021/jm101421d", "roc-auc", ("non-inhibitor", "inhibitor")),
    _c("oral_bioavailability", "Bioavailability_Ma", "bioavailability_ma", "classification",
       "probability of F >= 20%", "Human oral bioavailability of at least 20%.",
       "Ma C-Y, Yang S-Y, Zhang H, et al. Prediction models of human plasma protein binding rate and "
       "oral bioavailability derived by using GA-CG-SVM method. J Pharm Biomed Anal 2008;47:677-682. "
       "doi:10.1016/j.jpba.2008.03.023", "roc-auc", ("F < 20%", "F >= 20%")),
    _c("lipophilicity", "Lipophilicity_AstraZeneca", "lipophilicity_astrazeneca", "regression",
       "logD7.4", "Octanol/buffer distribution coefficient at pH 7.4 (AstraZeneca).", _AZ, "mae"),
    _c("aqueous_solubility", "Solubility_AqSolDB", "solubility_aqsoldb", "regression",
       "log10(mol/L)", "Aqueous solubility, logS (AqSolDB, 9,982 compounds).",
       "Sorkun MC, Khetan A, Er S. AqSolDB, a curated reference set of aqueous solubility and 2D "
       "descriptors. Sci Data 2019;6:143. doi:10.1038/s41597-019-0151-1", "mae"),
    # Distribution
    _c("bbb_martins", "BBB_Martins", "bbb_martins", "classification", "probability of BBB+",
       "Blood-brain barrier penetration (Martins et al.; TDC's benchmark set).",
       "Martins IF, Teixeira AL, Pinheiro L, Falcao AO. A Bayesian approach to in silico "
       "blood-brain barrier penetration modeling. J Chem Inf Model 2012;52:1686-1697. "
       "doi:10.1021/ci300124c", "roc-auc", ("BBB-", "BBB+")),
    _c("ppbr", "PPBR_AZ", "ppbr_az", "regression", "%",
       "Plasma protein binding rate, percent bound (AstraZeneca; several species).", _AZ, "mae"),
    _c("vdss", "VDss_Lombardo", "vdss_lombardo", "regression", "L/kg",
       "Human volume of distribution at steady state.",
       "Lombardo F, Jing Y. In silico prediction of volume of distribution in humans. J Chem Inf "
       "Model 2016;56:2042-2052. doi:10.1021/acs.jcim.6b00044", "spearman", log_target=True),
    # Metabolism
    _c("cyp2c9_inhibition", "CYP2C9_Veith", "cyp2c9_veith", "classification",
       "probability of inhibitor", "CYP2C9 inhibition.", _VEITH, "pr-auc",
       ("non-inhibitor", "inhibitor")),
    _c("cyp2d6_inhibition", "CYP2D6_Veith", "cyp2d6_veith", "classification",
       "probability of inhibitor", "CYP2D6 inhibition.", _VEITH, "pr-auc",
       ("non-inhibitor", "inhibitor")),
    _c("cyp3a4_inhibition", "CYP3A4_Veith", "cyp3a4_veith", "classification",
       "probability of inhibitor", "CYP3A4 inhibition.", _VEITH, "pr-auc",
       ("non-inhibitor", "inhibitor")),
    _c("cyp2c9_substrate", "CYP2C9_Substrate_CarbonMangels", "cyp2c9_substrate_carbonmangels",
       "classification", "probability of substrate", "CYP2C9 substrate.", _CARBON_MANGELS,
       "pr-auc", ("non-substrate", "substrate")),
    _c("cyp2d6_substrate", "CYP2D6_Substrate_CarbonMangels", "cyp2d6_substrate_carbonmangels",
       "classification", "probability of substrate", "CYP2D6 substrate.", _CARBON_MANGELS,
       "pr-auc", ("non-substrate", "substrate")),
    _c("cyp3a4_substrate", "CYP3A4_Substrate_CarbonMangels", "cyp3a4_substrate_carbonmangels",
       "classification", "probability of substrate", "CYP3A4 substrate.", _CARBON_MANGELS,
       "roc-auc", ("non-substrate", "substrate")),
    # Excretion
    _c("half_life", "Half_Life_Obach", "half_life_obach", "regression", "h",
       "Human terminal half-life after intravenous dosing.",
       "Obach RS, Lombardo F, Waters NJ. Trend analysis of a database of intravenous "
       "pharmacokinetic parameters in humans for 670 drug compounds. Drug Metab Dispos "
       "2008;36:1385-1405. doi:10.1124/dmd.108.020479", "spearman", log_target=True),
    _c("clearance_hepatocyte", "Clearance_Hepatocyte_AZ", "clearance_hepatocyte_az", "regression",
       "uL/min/10^6 cells", "Intrinsic clearance in hepatocytes (AstraZeneca).", _AZ, "spearman",
       log_target=True),
    _c("clearance_microsome", "Clearance_Microsome_AZ", "clearance_microsome_az", "regression",
       "mL/min/g", "Intrinsic clearance in liver microsomes (AstraZeneca).", _AZ, "spearman",
       log_target=True),
    # Toxicity
    _c("ld50", "LD50_Zhu", "ld50_zhu", "regression", "log10(1/(mol/kg))",
       "Rat acute oral toxicity, -log10(LD50 in mol/kg): higher is more toxic.",
       "Zhu H, Martin TM, Ye L, et al. Quantitative structure-activity relationship modeling of rat "
       "acute toxicity by oral exposure. Chem Res Toxicol 2009;22:1913-1921. doi:10.1021/tx900189p",
       "mae"),
    _c("herg_inhibition", "hERG", "herg", "classification", "probability of blocker",
       "hERG potassium channel blockade (Wang et al., 648 compounds).",
       "Wang S, Sun H, Liu H, et al. ADMET evaluation in drug discovery. 16. Predicting hERG "
       "blockers. Mol Pharm 2016;13:2855-2866. doi:10.1021/acs.molpharmaceut.6b00471", "roc-auc",
       ("non-blocker", "blocker")),
    _c("ames_mutagenicity", "AMES", "ames", "classification", "probability of mutagen",
       "Ames test mutagenicity.",
       "Xu C, Cheng F, Chen L, et al. In silico prediction of chemical Ames mutagenicity. J Chem "
       "Inf Model 2012;52:2840-2847. doi:10.1021/ci300400a", "roc-auc", ("non-mutagen", "mutagen")),
    _c("dili", "DILI", "dili", "classification", "probability of DILI",
       "Drug-induced liver injury.",
       "Xu Y, Dai Z, Chen F, et al. Deep learning for drug-induced liver injury. J Chem Inf Model "
       "2015;55:2085-2093. doi:10.1021/acs.jcim.5b00238", "roc-auc", ("no DILI", "DILI")),
    # Outside the benchmark group
    _c("cyp1a2_inhibition", "CYP1A2_Veith", "cyp1a2_veith", "classification",
       "probability of inhibitor", "CYP1A2 inhibition.", _VEITH, labels=("non-inhibitor", "inhibitor"),
       group="single"),
    _c("cyp2c19_inhibition", "CYP2C19_Veith", "cyp2c19_veith", "classification",
       "probability of inhibitor", "CYP2C19 inhibition.", _VEITH,
       labels=("non-inhibitor", "inhibitor"), group="single"),
    _c("herg_karim", "hERG_Karim", "herg_karim", "classification", "probability of blocker",
       "hERG blockade, IC50 < 10 uM (Karim et al., 13,445 compounds).",
       "Karim A, Lee M, Balle T, Sattar A. CardioTox net: a robust predictor for hERG channel "
       "blockade based on deep learning meta-feature ensembles. J Cheminform 2021;13:60. "
       "doi:10.1186/s13321-021-00541-z", labels=("non-blocker", "blocker"), group="single"),
    _c("clinical_toxicity", "ClinTox", "clintox", "classification",
       "probability of clinical toxicity", "Failed clinical trials for toxicity (ClinTox CT_TOX).",
       "Gayvert KM, Madhukar NS, Elemento O. A data-driven approach to predicting successes and "
       "failures of clinical trials. Cell Chem Biol 2016;23:1294-1301. "
       "doi:10.1016/j.chembiol.2016.07.023", labels=("not toxic", "toxic"), group="single"),
    _c("carcinogenicity", "Carcinogens_Lagunin", "carcinogens_lagunin", "classification",
       "probability of carcinogen", "Rodent carcinogenicity.",
       "Lagunin A, Filimonov D, Zakharov A, et al. Computer-aided prediction of rodent "
       "carcinogenicity by PASS and CISOC-PSCT. QSAR Comb Sci 2009;28:806-810. "
       "doi:10.1002/qsar.200860192", labels=("non-carcinogen", "carcinogen"), group="single"),
    _c("skin_reaction", "Skin_Reaction", "skin_reaction", "classification",
       "probability of sensitizer", "Skin sensitization (murine local lymph node assay).",
       "Alves VM, Muratov E, Fourches D, et al. Predicting chemically-induced skin reactions. Part "
       "I. Toxicol Appl Pharmacol 2015;284:262-272. doi:10.1016/j.taap.2014.12.014",
       labels=("non-sensitizer", "sensitizer"), group="single"),
    *[_c("tox21_" + assay.lower().replace("-", "_"), f"Tox21 {assay}", f"tox21:{assay}",
         "classification", "probability of active", f"Tox21 {assay}: {what}.", _TOX21,
         labels=("inactive", "active"), group="single")
      for assay, what in _TOX21_ASSAYS.items()],
]}


class ChecksumMismatch(MolserveError, RuntimeError):
    """A downloaded or cached file is not the file its checksum names."""

    code = "checksum_mismatch"


def _digest(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def check_digests(data: bytes, source: SourceFile) -> None:
    """Raise ChecksumMismatch unless `data` matches every digest pinned for `source`."""
    for algorithm in ("sha256", "md5"):
        expected = getattr(source, algorithm)
        if expected and _digest(data, algorithm) != expected:
            raise ChecksumMismatch(
                f"{source.name} from {source.url} has {algorithm} {_digest(data, algorithm)}, "
                f"expected {expected}; the download was discarded"
                + (f" ({source.note})" if source.note else ""))


def default_cache_dir() -> Path:
    from molserve.config import ComputeSettings

    return ComputeSettings().cache_dir / "tdc"


def fetch(source: SourceFile, cache_dir: Path | None = None, *, client=None,
          timeout_s: float = 120.0) -> Path:
    """Download one TDC file from Harvard Dataverse into the cache, verified; return its path.

    A cached copy that still matches its digests is used without a request. A download that does
    not match is never written to the cache. `client` is an httpx.Client (tests pass one with a
    mock transport).
    """
    import httpx

    folder = cache_dir or default_cache_dir()
    target = folder / source.name
    if target.is_file():
        try:
            check_digests(target.read_bytes(), source)
            return target
        except ChecksumMismatch:
            target.unlink()
    own = client is None
    # Dataverse refuses some default client user agents (403).
    client = client or httpx.Client(follow_redirects=True, timeout=timeout_s,
                                    headers={"user-agent": "molserve (TDC dataset loader)"})
    try:
        response = client.get(source.url)
        response.raise_for_status()
        data = response.content
    finally:
        if own:
            client.close()
    check_digests(data, source)
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


@dataclass(frozen=True)
class Row:
    drug_id: str
    smiles: str
    y: float


def _rows(reader: Iterable[dict[str, str]], label_column: str = "Y") -> list[Row]:
    rows = []
    for record in reader:
        smiles = record.get("Drug") or record.get("X") or ""
        label = (record.get(label_column) or "").strip()
        if not smiles or not label:
            continue
        rows.append(Row(record.get("Drug_ID") or record.get("ID") or "", smiles, float(label)))
    return rows


def _bundled_bytes(relative: str) -> bytes:
    data = (BUNDLED_DIR / relative).read_bytes()
    if hashlib.sha256(data).hexdigest() != BUNDLED_SHA256[relative]:
        raise ChecksumMismatch(f"bundled {relative} does not match its recorded sha256; reinstall molserve")
    return data


def read_benchmark(entry: TdcEndpoint, *, source: str = "bundled",
                   cache_dir: Path | None = None) -> tuple[list[Row], list[Row]]:
    """TDC's (train_val, test) rows of a benchmark-group dataset, as TDC ships them."""
    if not entry.benchmark:
        raise ValueError(f"{entry.endpoint} is not in TDC's ADMET benchmark group")
    data = (_bundled_bytes("admet_group.zip") if source == "bundled"
            else fetch(ADMET_GROUP, cache_dir).read_bytes())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        parts = []
        for part in ("train_val", "test"):
            with archive.open(f"admet_group/{entry.key}/{part}.csv") as handle:
                parts.append(_rows(csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8"))))
    return parts[0], parts[1]


def read_single(entry: TdcEndpoint, *, source: str = "bundled",
                cache_dir: Path | None = None) -> list[Row]:
    """Rows of a dataset outside the benchmark group (the bundled CSV or TDC's own tab file).

    TDC's tab files are read as TDC reads them: exact duplicate rows dropped, rows without the
    label dropped (Tox21: one column per assay).
    """
    if entry.benchmark:
        raise ValueError(f"{entry.endpoint} is a benchmark dataset: use read_benchmark")
    if source == "bundled":
        text = _bundled_bytes(entry.bundled_path).decode("utf-8")
        return _rows(csv.DictReader(io.StringIO(text)))
    text = fetch(entry.source_file, cache_dir).read_text(encoding="utf-8")
    label = entry.key.split(":", 1)[1] if entry.key.startswith("tox21:") else "Y"
    seen: set[tuple[str, ...]] = set()
    unique = []
    for record in csv.DictReader(io.StringIO(text), delimiter="\t"):
        fingerprint = tuple(record.values())
        if fingerprint not in seen:
            seen.add(fingerprint)
            unique.append(record)
    return _rows(unique, label)


def to_dataset(entry: TdcEndpoint, rows: list[Row], part: str = "") -> Dataset:
    """A molserve Dataset (labels as given; curation happens in training)."""
    source = entry.source_file
    where = f"admet_group/{entry.key}/{part}.csv" if entry.benchmark else entry.bundled_path
    return Dataset(
        name=entry.endpoint,
        smiles=[r.smiles for r in rows],
        labels=[r.y for r in rows],
        task=entry.task,
        units=entry.units,
        description=entry.description,
        source=f"TDC {entry.tdc_name} ({where}; Harvard Dataverse file {source.file_id})",
        licence=LICENCE,
        checksum=BUNDLED_SHA256[entry.bundled_path],
        label_names=entry.label_names,
        extra={"tdc_name": entry.tdc_name, "tdc_group": entry.group,
               "citation": entry.citation, "tdc_citation": TDC_CITATION,
               **({"tdc_metric": entry.metric} if entry.metric else {})},
    )


def load(endpoint: str, *, source: str = "bundled", cache_dir: Path | None = None
         ) -> tuple[Dataset, Dataset | None]:
    """(training data, TDC's test set or None) for a bundled TDC endpoint."""
    try:
        entry = CATALOG[endpoint]
    except KeyError:
        raise KeyError(f"unknown TDC endpoint {endpoint!r}; known: {sorted(CATALOG)}") from None
    if entry.benchmark:
        train_val, test = read_benchmark(entry, source=source, cache_dir=cache_dir)
        return to_dataset(entry, train_val, "train_val"), to_dataset(entry, test, "test")
    return to_dataset(entry, read_single(entry, source=source, cache_dir=cache_dir)), None
