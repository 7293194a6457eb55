"""A transformer never predicts from a truncated SMILES: a molecule longer than its token limit
gets an error with the code `too_long_for_model` (so the gateway answers it from another tier),
and the model never sees it."""

from types import SimpleNamespace

import numpy as np

from molserve.answers import Answer
from molserve.chem.features import FeatureSpec, featurize
from molserve.chem.molecules import parse_smiles
from molserve.chem.similarity import SimilarityIndex
from molserve.models.transformer.runtime import TOO_LONG, TransformerModel
from molserve.models.transformer.tokenizer import build_vocab, make_tokenizer
from molserve.registry.store import Artifact

SHORT = ["CCO", "c1ccccc1O"]
LONG = "C" * 40 + "O"  # 41 atoms: 43 tokens with <s> and </s>


class Runner:
    """Stands in for an onnxruntime session: records what it was given."""

    def __init__(self):
        self.seen = []

    def run(self, _, feeds):
        self.seen.append(feeds["input_ids"].shape)
        return [np.ones((feeds["input_ids"].shape[0], 1), dtype=np.float32)]


def _model(tmp_path, max_length=32):
    train = ["CCN", "CCCO"]
    manifest = {"endpoint": "logbb", "version": 1, "kind": "transformer", "task": "regression",
                "model_id": "logbb/transformer", "units": "u", "model": {"max_length": max_length},
                "uncertainty": {"method": "m", "quantile": 0.5, "confidence": 0.9},
                "applicability_domain": {"threshold": 0.3}}
    artifact = Artifact("logbb", 1, tmp_path, manifest)
    bits = featurize([parse_smiles(s).mol for s in train], FeatureSpec()).on_bits
    heads = [{"endpoint": "logbb", "task": "regression", "output": 0, "activation": "identity",
              "label_mean": 0.0, "label_scale": 1.0}]
    runner = Runner()
    model = TransformerModel(artifact, "onnx", "cpu", make_tokenizer(build_vocab(SHORT + [LONG])),
                             runner, SimilarityIndex.build(bits, 2048), train, 0.0, max_length, heads)
    return model, runner


def test_a_molecule_beyond_the_token_limit_is_refused_with_its_reason(tmp_path):
    model, runner = _model(tmp_path)
    answers = model.predict([SHORT[0], LONG, SHORT[1]])
    assert "value" in answers[0] and "value" in answers[2]
    assert answers[1]["provenance"]["error_code"] == TOO_LONG
    assert "43 tokens" in answers[1]["error"] and "at most 32" in answers[1]["error"]
    # The model saw only the two short molecules, padded to their own length (no prefix of LONG).
    assert runner.seen == [(2, 11)]
    # The gateway reads the code from the worker's answer.
    parsed = Answer.from_json(answers[1])
    assert parsed.is_error and parsed.provenance.details["error_code"] == TOO_LONG


def test_a_molecule_at_the_limit_is_answered(tmp_path):
    model, _ = _model(tmp_path, max_length=43)
    assert "value" in model.predict([LONG])[0]


def test_a_transformer_classifier_claims_no_interval_and_says_so(tmp_path):
    model, _ = _model(tmp_path)
    model.artifact.manifest.update(task="classification", label_names=["BBB-", "BBB+"])
    model.heads = [{"endpoint": "logbb", "task": "classification", "output": 0,
                    "activation": "sigmoid"}]
    answer = model.predict(["CCO"])[0]
    assert "value" in answer and "uncertainty" not in answer
    assert answer["provenance"]["uncertainty"].startswith("none")
    parsed = Answer.from_json(answer)
    assert parsed.uncertainty is None


def test_the_gateway_answers_a_refused_molecule_from_the_fast_tier_with_the_workers_reason(tmp_path):
    import asyncio

    from molserve.answers import Provenance
    from molserve.prediction.router import Router
    from molserve.registry.store import Registry

    router = Router(Registry(tmp_path))
    remote = Provenance("logbb/transformer", 1, "transformer")
    fast = Provenance("logbb/gbm", 1, "fast")

    async def remote_timed(_remote, batch, name, deadline, request_id):
        return [Answer(remote, 0.5), Answer(Provenance("logbb/transformer", 1, "transformer",
                                                       {"error_code": TOO_LONG}), error="too long"),
                Answer(Provenance("logbb/transformer", 1, "transformer"), error="other failure")]

    router.resolve_endpoints = lambda endpoints, hidden=frozenset(): ["logbb"]
    router.plan = lambda names, tier: {"logbb": "transformer"}
    router.remotes = {"transformer": SimpleNamespace(settings=SimpleNamespace(timeout_s=1.0))}
    router._remote_timed = remote_timed
    router._local_answers = lambda batch, names: {
        "logbb": [Answer(fast, 0.1 * (i + 1)) for i in range(len(batch.canonical_smiles))]}
    body = asyncio.run(router.predict(["CCO", LONG, "CCN"], ["logbb"]))
    answers = [r["predictions"]["logbb"] for r in body["results"]]
    assert answers[0].provenance.tier == "transformer" and not answers[0].provenance.degraded
    assert answers[1].provenance.tier == "fast" and answers[1].provenance.degraded_reason == TOO_LONG
    assert answers[2].provenance.degraded_reason == "worker_error"
