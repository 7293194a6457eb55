"""What an explanation costs, in one process: in-process predictions with and without `explain`,
one endpoint and every endpoint, a molecule at a time and in a batch, interleaved round by round
so both sides see the same machine load; plus the one-off cost of a model's first explanation
(its node expectations) and, when LightGBM is installed, how the path attributions compare with
LightGBM's exact TreeSHAP (`pred_contrib`) on the same molecules.

Run: .venv/bin/python -m benchmarks.bench_explain [--registry registry] [--endpoint solubility]
     [--rounds 5] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_gateway import MOLECULES
from molserve.chem.depict import contribution_svg
from molserve.chem.features import featurize
from molserve.chem.molecules import largest_fragment, parse_smiles
from molserve.data.bundled import load_bundled
from molserve.prediction.explain import Explainer, atom_map, column_names, explain_molecule, space_of
from molserve.prediction.router import Router
from molserve.registry.store import Registry


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pool(n: int) -> list[str]:
    smiles = load_bundled("bbb_penetration").smiles
    return [*MOLECULES, *smiles[:: max(1, len(smiles) // n)]][:n]


def speed(router: Router, molecules: list[str], endpoints: list[str] | None, batch: int,
          rounds: int) -> dict[str, float]:
    """Molecules per second with and without `explain`, the two interleaved in every round."""
    seconds = {False: [], True: []}
    for _ in range(rounds):
        for explain in (False, True):
            started = time.perf_counter()
            for start in range(0, len(molecules), batch):
                router.predict_local(molecules[start : start + batch], endpoints, explain=explain)
            seconds[explain].append(time.perf_counter() - started)
    plain, explained = statistics.median(seconds[False]), statistics.median(seconds[True])
    return {"molecules_per_s": round(len(molecules) / plain, 1),
            "molecules_per_s_explained": round(len(molecules) / explained, 1),
            "ms_per_molecule": round(1000 * plain / len(molecules), 3),
            "ms_per_molecule_explained": round(1000 * explained / len(molecules), 3),
            "slowdown": round(explained / plain, 2)}


def against_treeshap(router: Router, endpoint: str, molecules: list[str]) -> dict[str, float] | None:
    """Path attributions next to LightGBM's exact TreeSHAP of the same members (their mean):
    correlation of per-feature and per-atom contributions, and how often the top atom agrees."""
    try:
        import lightgbm
    except ImportError:
        return None
    model = router.fast.models[endpoint]
    text = model.artifact.file("lightgbm_members.txt").read_text()
    members = [part.split("\n", 1)[1] for part in text.split("# member ")[1:]]
    boosters = [lightgbm.Booster(model_str=member) for member in members]
    explainer = Explainer()
    paths = explainer.paths(model)
    names, space = column_names(model.spec), space_of(model)
    canonical = [parse_smiles(s).canonical_smiles for s in molecules]
    x = featurize([largest_fragment(parse_smiles(s).mol) for s in canonical], model.spec).matrix
    credit, raw = paths.attribute(x)
    shap = np.mean([b.predict(x.astype(np.float64), pred_contrib=True) for b in boosters], axis=0)
    feature_r, atom_r, top_same = [], [], 0
    for row, smiles in enumerate(canonical):
        atoms = atom_map(smiles, model.spec.radius, model.spec.n_bits)
        counts = x[row, : model.spec.n_bits]
        ours = explain_molecule(credit[row], counts, raw[row], paths.base, atoms, names, space)
        theirs = explain_molecule(shap[row, :-1], counts, shap[row].sum(), shap[row, -1], atoms,
                                  names, space)
        feature_r.append(np.corrcoef(credit[row], shap[row, :-1])[0, 1])
        a, b = np.array(ours["atoms"]), np.array(theirs["atoms"])
        if a.std() > 0 and b.std() > 0:
            atom_r.append(np.corrcoef(a, b)[0, 1])
        top_same += int(np.argmax(np.abs(a)) == np.argmax(np.abs(b)))
    return {"molecules": len(canonical),
            "feature_pearson_median": round(float(np.median(feature_r)), 3),
            "atom_pearson_median": round(float(np.median(atom_r)), 3),
            "top_atom_agreement": round(top_same / len(canonical), 3),
            "raw_max_abs_difference": float(np.max(np.abs(raw - shap.sum(axis=1))))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--endpoint", default="solubility")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--molecules", type=int, default=64)
    args = parser.parse_args()
    router = Router(Registry(Path(args.registry)))
    router.load()
    molecules = pool(args.molecules)
    report: dict = {"load_average_before": load_average(), "endpoints": len(router.fast.models),
                    "molecules": len(molecules)}

    started = time.perf_counter()
    cold = Explainer()
    for model in router.fast.models.values():
        cold.paths(model)
    report["first_explanation_setup_s_all_endpoints"] = round(time.perf_counter() - started, 3)
    report["node_expectations_mb_all_endpoints"] = round(cold.nbytes / 1e6, 1)

    for label, endpoints in (("one_endpoint", [args.endpoint]), ("all_endpoints", None)):
        router.predict_local(molecules[:2], endpoints, explain=True)  # warm: node expectations
        report[f"{label}_one_at_a_time"] = speed(router, molecules[:16], endpoints, 1, args.rounds)
        report[f"{label}_batch_{args.batch}"] = speed(router, molecules, endpoints, args.batch,
                                                      args.rounds)

    drawn = [(parse_smiles(s).canonical_smiles, np.linspace(-1, 1, parse_smiles(s).mol.GetNumAtoms()))
             for s in molecules]
    started = time.perf_counter()
    for smiles, weights in drawn:
        contribution_svg(smiles, weights.tolist())
    report["svg_ms_per_drawing"] = round(1000 * (time.perf_counter() - started) / len(drawn), 3)

    compared = {}
    for endpoint in dict.fromkeys([args.endpoint, "ames_mutagenicity"]):
        if endpoint in router.fast.models:
            compared[endpoint] = against_treeshap(router, endpoint, molecules)
    report["against_lightgbm_treeshap"] = compared
    report["load_average_after"] = load_average()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
