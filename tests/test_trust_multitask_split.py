"""Multi-task fine-tuning holds out by scaffold across every task: another task's training
molecule that shares a held-out molecule's scaffold is not trained on."""

from molserve.models.transformer.pipeline import merge_endpoints
from molserve.registry.store import Registry


def _fast(registry, endpoint, rows):
    table = "canonical_smiles,label,split\n" + "".join(f"{s},{y},{side}\n" for s, y, side in rows)
    registry.write(endpoint, {"data.csv": table.encode()}, {"kind": "gbm", "task": "regression"})


def test_a_training_molecule_sharing_a_held_out_scaffold_is_excluded_for_every_task(tmp_path):
    registry = Registry(tmp_path)
    _fast(registry, "logbb", [("OCCc1ccccc1", 0.1, "test"), ("CCO", 0.2, "train"),
                              ("OC1CCCCC1", 0.3, "train")])
    _fast(registry, "bbb", [("Nc1ccccc1", 1, "train"),  # benzene: logbb tests a benzene
                            ("NC1CCCCC1", 0, "train"), ("CCN", 1, "valid")])
    data, _ = merge_endpoints(registry, ["logbb", "bbb"])
    side = dict(zip(data.smiles, data.split, strict=True))
    assert side["OCCc1ccccc1"] == "test"
    assert side["Nc1ccccc1"] == "excluded"
    # Cyclohexanes are held out nowhere: trained on. Acyclic molecules share the empty scaffold
    # with bbb's validation molecule CCN, so CCO is excluded too.
    assert side["OC1CCCCC1"] == "train" and side["NC1CCCCC1"] == "train"
    assert side["CCO"] == "excluded" and side["CCN"] == "valid"
    # Labels keep their own endpoint's side: each endpoint is still scored on its own test set.
    y, sides, _ = data.matrix()
    row = data.smiles.index("Nc1ccccc1")
    assert sides[row, 1] == "train" and sides[row, 0] == ""


def test_half_the_validation_scaffolds_are_set_aside_for_calibration():
    from molserve.chem.molecules import parse_smiles
    from molserve.data.splits import murcko_scaffold
    from molserve.models.transformer.pipeline import set_aside_calibration

    smiles = [f"C1{'C' * (1 + i % 6)}C1" + "C" * (i // 6) + "O" for i in range(60)]
    sides = ["valid" if i % 2 else "train" for i in range(60)]
    out = set_aside_calibration(smiles, sides)
    calibration = [i for i, s in enumerate(out) if s == "calibration"]
    stopping = [i for i, s in enumerate(out) if s == "valid"]
    assert len(calibration) >= 10 and len(stopping) >= 10
    assert [s for s in out if s == "train"] == [s for s in sides if s == "train"]
    scaffold = {i: murcko_scaffold(parse_smiles(smiles[i]).mol) for i in range(60)}
    assert not {scaffold[i] for i in calibration} & {scaffold[i] for i in stopping}
    # Too few validation molecules: nothing is set aside.
    assert set_aside_calibration(smiles[:20], sides[:20]) == sides[:20]
