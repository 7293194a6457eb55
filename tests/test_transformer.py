"""The transformer tier's model code: tokenizer, pretraining, fine-tuning, ONNX export."""

import numpy as np
import pytest

from molserve.models.transformer.tokenizer import SPECIAL_TOKENS, build_vocab, make_tokenizer, tokenize

TRICKY = {
    "C[C@@H](N)C(=O)O": ["C", "[C@@H]", "(", "N", ")", "C", "(", "=", "O", ")", "O"],
    "c1cc[nH]c1": ["c", "1", "c", "c", "[nH]", "c", "1"],
    "ClCBr": ["Cl", "C", "Br"],
    "C%12CC%12": ["C", "%12", "C", "C", "%12"],
    "[Na+].[Cl-]": ["[Na+]", ".", "[Cl-]"],
    "F/C=C/F": ["F", "/", "C", "=", "C", "/", "F"],
    "[2H]OC#N": ["[2H]", "O", "C", "#", "N"],
    "CC12CC1C2": ["C", "C", "1", "2", "C", "C", "1", "C", "2"],
    "[Se]c1ccsc1": ["[Se]", "c", "1", "c", "c", "s", "c", "1"],
}


@pytest.mark.parametrize(("smiles", "tokens"), TRICKY.items())
def test_atom_level_tokens(smiles, tokens):
    assert tokenize(smiles) == tokens
    assert "".join(tokens) == smiles


def test_characters_outside_the_grammar_become_unk_not_merges():
    assert tokenize("CCX") == ["C", "C", "<unk>"]
    assert tokenize("Cl") == ["Cl"] and tokenize("Cc") == ["C", "c"]


def test_hugging_face_tokenizer_matches_the_reference_tokenization():
    vocab = build_vocab(TRICKY)
    assert list(vocab)[:5] == SPECIAL_TOKENS
    tokenizer = make_tokenizer(vocab)
    for smiles, tokens in TRICKY.items():
        ids = tokenizer(smiles)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", *tokens, "</s>"]
    unknown = tokenizer("C[Xe]")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(unknown)[2] == "<unk>"


def test_pretrain_then_finetune_from_the_pretrained_directory(tmp_path, trained_registry):
    """MLM pretraining on MOSES SMILES produces a base that fine-tuning accepts as --base."""
    import shutil

    from molserve.models.transformer.corpus import read_corpus
    from molserve.models.transformer.modeling import pretrain
    from molserve.models.transformer.pipeline import finetune_endpoint
    from molserve.registry import Registry

    corpus = read_corpus("moses", limit=512, seed=0)
    summary = pretrain(corpus, tmp_path / "base", size="tiny", max_steps=12, batch_size=32,
                       learning_rate=2e-3)
    assert summary["steps"] == 12 and np.isfinite(summary["final_loss"])
    assert (tmp_path / "base" / "model.safetensors").is_file()
    assert (tmp_path / "base" / "tokenizer.json").is_file()
    registry = Registry(tmp_path / "registry")
    shutil.copytree(trained_registry.root / "logbb", registry.root / "logbb")
    artifact = finetune_endpoint(registry, "logbb", base=str(tmp_path / "base"), epochs=1,
                                 export=False, learning_rate=1e-3)
    assert artifact.kind == "transformer"
    assert artifact.manifest["model"]["base"] == str(tmp_path / "base")


def test_finetuned_artifact_shares_the_fast_models_split_and_reports_both(transformer_registry):
    artifact = transformer_registry.latest("logbb", kind="transformer")
    fast = transformer_registry.latest("logbb", kind="gbm")
    manifest = artifact.manifest
    assert manifest["split"]["sizes"] == fast.manifest["split"]["sizes"]
    assert manifest["dataset"]["sha256"] == fast.manifest["dataset"]["sha256"]
    assert "rmse" in manifest["metrics"]["test"] and "rmse" in manifest["metrics"]["fast_model_test"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "model.onnx",
            "model.int8.onnx"} <= set(manifest["files"])
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in manifest["files"])
    artifact.verify()


def test_onnx_matches_torch_and_int8_stays_close(transformer_registry):
    from molserve.models.transformer.runtime import TransformerModel

    artifact = transformer_registry.latest("logbb", kind="transformer")
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
              "C[C@@H](N)C(=O)O", "OCC(O)CO"]
    torch_values = TransformerModel.load(artifact, backend="torch", device="cpu").outputs(smiles)
    onnx_values = TransformerModel.load(artifact, backend="onnx").outputs(smiles)
    int8_values = TransformerModel.load(artifact, backend="onnx-int8").outputs(smiles)
    assert np.abs(torch_values - onnx_values).max() < 1e-4
    spread = float(np.std(torch_values)) + 1e-3
    assert np.abs(torch_values - int8_values).max() < max(0.05, 0.5 * spread)


def test_transformer_answers_carry_provenance_and_domain(transformer_registry):
    from molserve.models.transformer.runtime import TransformerModel

    model = TransformerModel.load(transformer_registry.latest("logbb", kind="transformer"))
    answers = model.predict(["CCO", "C1CC"])
    assert answers[0]["provenance"]["tier"] == "transformer"
    low, high = answers[0]["uncertainty"]["interval"]
    assert low < answers[0]["value"] < high
    assert 0 <= answers[0]["applicability_domain"]["max_similarity"] <= 1
    assert "unclosed ring" in answers[1]["error"]


def test_device_is_chosen_at_run_time(monkeypatch):
    from molserve.models.transformer.modeling import pick_device

    monkeypatch.delenv("MOLSERVE_DEVICE", raising=False)
    import torch

    assert pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("MOLSERVE_DEVICE", "cpu")
    assert pick_device() == "cpu"


@pytest.fixture(scope="module")
def multitask_registry(transformer_registry, tmp_path_factory):
    """The transformer registry plus one multi-task model over logBB (regression) and BBB
    permeability (classification): B3DB's two tables, which share many molecules."""
    import shutil

    from molserve.models.transformer.pipeline import finetune_endpoints
    from molserve.registry import Registry

    root = tmp_path_factory.mktemp("mt") / "registry"
    shutil.copytree(transformer_registry.root, root)
    registry = Registry(root)
    finetune_endpoints(registry, ["logbb", "bbb_penetration"], name="b3db", base="random:tiny",
                       epochs=2, learning_rate=1e-3, batch_size=128)
    return registry


def test_masked_loss_ignores_missing_labels():
    """A task with no label in the batch contributes no gradient to its output."""
    import torch

    from molserve.models.transformer.modeling import _masked_loss, head_spec

    heads = head_spec(["regression", "classification"], ["a", "b"], [0.0, 0.0], [1.0, 1.0],
                      single=False)
    logits = torch.randn(4, 2, requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [2.0, 0.0]])
    mask = torch.tensor([[True, False], [True, False], [False, False], [True, False]])
    _masked_loss(logits, target, mask, heads).backward()
    assert torch.all(logits.grad[:, 1] == 0)
    assert torch.all(logits.grad[2] == 0)
    assert torch.all(logits.grad[[0, 1, 3], 0] != 0)


def test_multitask_model_is_tested_on_each_endpoints_own_split(multitask_registry):
    artifact = multitask_registry.latest("b3db", kind="transformer")
    manifest = artifact.manifest
    assert manifest["task"] == "multitask"
    assert set(manifest["tasks"]) == {"logbb", "bbb_penetration"}
    for endpoint, task in manifest["tasks"].items():
        fast = multitask_registry.latest(endpoint, kind="gbm")
        assert task["task"] == fast.manifest["task"]
        assert task["metrics"]["test"]["n"] == fast.manifest["metrics"]["test"]["n"]
        assert task["metrics"]["fast_model_test"] == fast.manifest["metrics"]["test"]
    assert "rmse" in manifest["tasks"]["logbb"]["metrics"]["test"]
    assert 0.0 <= manifest["tasks"]["bbb_penetration"]["metrics"]["test"]["roc_auc"] <= 1.0
    # Shared molecules make the union smaller than the sum of the two tables.
    sizes = [multitask_registry.latest(e, kind="gbm").manifest["split"]["sizes"] for e in manifest["tasks"]]
    assert manifest["rows"]["molecules"] < sum(sum(s.values()) for s in sizes)


def test_multitask_never_trains_on_a_molecule_held_out_for_any_endpoint(multitask_registry):
    import csv

    held_out = set()
    for endpoint in ("logbb", "bbb_penetration"):
        fast = multitask_registry.latest(endpoint, kind="gbm")
        with open(fast.file("data.csv"), newline="") as handle:
            held_out |= {r["canonical_smiles"] for r in csv.DictReader(handle) if r["split"] != "train"}
    artifact = multitask_registry.latest("b3db", kind="transformer")
    trained_on = set(artifact.file("train_smiles.txt").read_text().split())
    assert trained_on and not trained_on & held_out


def test_multitask_model_serves_both_endpoints_from_one_load(multitask_registry):
    from molserve.config import WorkerSettings
    from molserve.models.transformer.runtime import TransformerModel
    from molserve.worker.app import load_models

    artifact = multitask_registry.latest("b3db", kind="transformer")
    smiles = ["CCO", "c1ccccc1O", "CN1CCC[C@H]1c1cccnc1"]
    torch_out = TransformerModel.load(artifact, backend="torch", device="cpu").outputs(smiles)
    onnx_out = TransformerModel.load(artifact, backend="onnx").outputs(smiles)
    assert torch_out.shape == (3, 2)
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-4)
    assert np.all((torch_out[:, 1] >= 0) & (torch_out[:, 1] <= 1))

    models, errors = load_models(WorkerSettings(registry=multitask_registry.root, device="cpu"))
    assert not errors
    assert models["bbb_penetration"].model.artifact.endpoint == "b3db"
    answers = models["bbb_penetration"].predict(smiles + ["C1CC"])
    assert answers[-1]["error"]
    fast = multitask_registry.latest("bbb_penetration", kind="gbm")
    assert answers[0]["label"] in fast.manifest["label_names"]
    assert answers[0]["provenance"]["model_id"] == "b3db/transformer"
    assert "multi-task" in answers[0]["provenance"]["kind"]


def test_each_endpoint_is_served_by_its_best_transformer(multitask_registry):
    """logBB has a single-task and a multi-task transformer: the one with the lower test RMSE
    on logBB's split serves it."""
    from molserve.models.transformer.runtime import endpoint_manifest, transformer_artifacts

    single = multitask_registry.latest("logbb", kind="transformer")
    multi = multitask_registry.latest("b3db", kind="transformer")
    rmse = {a.endpoint: endpoint_manifest(a, "logbb")["metrics"]["test"]["rmse"] for a in (single, multi)}
    chosen = transformer_artifacts(multitask_registry)
    assert chosen["logbb"].endpoint == min(rmse, key=rmse.get)
    assert chosen["bbb_penetration"].endpoint == "b3db"
    assert chosen["hydration_free_energy"].endpoint == "hydration_free_energy"


def test_multitask_cli_needs_a_name(multitask_registry, capsys):
    from molserve.cli import main

    code = main(["--registry", str(multitask_registry.root), "finetune", "--dataset", "logbb,bbb_penetration",
                 "--base", "random:tiny", "--epochs", "1"])
    assert code != 0
    assert "--name" in capsys.readouterr().err


def test_a_multitask_model_cannot_take_an_endpoints_name(multitask_registry):
    from molserve.models.transformer.pipeline import finetune_endpoints

    with pytest.raises(ValueError, match="name of its own"):
        finetune_endpoints(multitask_registry, ["logbb", "bbb_penetration"], name="logbb",
                           base="random:tiny", epochs=1)
    with pytest.raises(ValueError, match="at least two"):
        finetune_endpoints(multitask_registry, ["logbb", "logbb"], name="twice", base="random:tiny")


def test_pretraining_continues_from_an_earlier_model(tmp_path):
    """`pretrain --base` keeps the base's tokenizer, changes its weights, and counts the whole
    lineage's budget."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from molserve.models.transformer.corpus import read_corpus
    from molserve.models.transformer.modeling import pretrain

    first = read_corpus("moses", limit=256, seed=0)
    pretrain(first, tmp_path / "a", size="tiny", max_steps=6, batch_size=32, learning_rate=2e-3)
    second = read_corpus("moses", limit=256, seed=1)  # another sample: the team's own library
    summary = pretrain(second, tmp_path / "b", max_steps=4, batch_size=32, learning_rate=2e-3,
                       base=str(tmp_path / "a"))
    assert summary["steps"] == 4 and summary["total_steps"] == 10
    assert summary["size"] == "tiny" and len(summary["earlier_runs"]) == 1
    assert AutoTokenizer.from_pretrained(tmp_path / "b").get_vocab() == \
        AutoTokenizer.from_pretrained(tmp_path / "a").get_vocab()
    before = load_file(str(tmp_path / "a" / "model.safetensors"))
    after = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not np.allclose(before[k], after[k]) for k in before)


def test_the_worker_serves_a_multitask_model_over_http(multitask_registry):
    from fastapi.testclient import TestClient

    from molserve.config import WorkerSettings
    from molserve.worker.app import create_worker_app

    settings = WorkerSettings(registry=multitask_registry.root, backend="onnx-int8", max_wait_ms=1)
    with TestClient(create_worker_app(settings)) as client:
        listed = {m["endpoint"]: m for m in client.get("/v1/models").json()}
        assert listed["bbb_penetration"]["model_id"] == "b3db/transformer"
        assert listed["bbb_penetration"]["task"] == "classification"
        assert "roc_auc" in listed["bbb_penetration"]["metrics"]
        body = {"molecules": ["CCO", "CN1CCC[C@H]1c1cccnc1"], "endpoints": ["bbb_penetration", "logbb"]}
        results = client.post("/v1/predict", json=body).json()["results"]
        assert [0.0 <= a["value"] <= 1.0 for a in results["bbb_penetration"]] == [True, True]
        assert all(isinstance(a["value"], float) and a["units"] for a in results["logbb"])
