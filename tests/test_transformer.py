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
