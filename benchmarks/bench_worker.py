"""Transformer inference throughput on this CPU: torch eager vs onnxruntime fp32 vs int8, for a
ChemBERTa-zinc-base-sized RoBERTa (6 layers, hidden 768, 12 heads; random weights: speed does
not depend on them), at drug-like SMILES lengths, through the worker's own inference code
(tokenization included). Also prints FLOPs per molecule for the GPU estimate.

Run: .venv/bin/python -m benchmarks.bench_worker [--size chemberta-zinc-base] [-n 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def build(size: str, folder: Path, corpus: list[str]) -> Path:
    from transformers import RobertaForSequenceClassification

    from molserve.models.transformer.modeling import export_onnx, roberta_config
    from molserve.models.transformer.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(corpus)
    config = roberta_config(len(tokenizer), size, 256, num_labels=1, problem_type="regression")
    model = RobertaForSequenceClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    export_onnx(folder, folder / "model.onnx")
    export_onnx(folder, folder / "model.onnx", quantize=True)
    return folder


class _Runner:
    """The worker's inference path (TransformerModel.outputs) on a bare model directory."""

    def __init__(self, folder: Path, backend: str, threads: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.backend = backend
        if backend == "torch":
            import torch
            from transformers import AutoModelForSequenceClassification

            torch.set_num_threads(threads)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            name = "model.onnx" if backend == "onnx" else "model.int8.onnx"
            self.model = ort.InferenceSession(str(folder / name), options,
                                              providers=["CPUExecutionProvider"])

    def __call__(self, smiles: list[str]) -> np.ndarray:
        encoded = self.tokenizer(smiles, padding=True, truncation=True, max_length=256,
                                 return_tensors="np")
        if self.backend == "torch":
            import torch

            with torch.inference_mode():
                return self.model(input_ids=torch.from_numpy(encoded["input_ids"]),
                                  attention_mask=torch.from_numpy(encoded["attention_mask"])).logits.numpy()
        return self.model.run(None, {"input_ids": encoded["input_ids"].astype(np.int64),
                                     "attention_mask": encoded["attention_mask"].astype(np.int64)})[0]


def flops_per_molecule(layers: int, hidden: int, intermediate: int, tokens: float) -> float:
    """Forward FLOPs: 2 x (4 h^2 attention projections + 2 h i feed-forward) per token per layer
    plus 2 x 2 x L^2 h for attention scores and mixing."""
    per_token = layers * 2 * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = layers * 2 * 2 * tokens * tokens * hidden
    return per_token * tokens + attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="chemberta-zinc-base")
    parser.add_argument("-n", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from molserve.data.bundled import load_bundled
    from molserve.models.transformer.corpus import read_corpus
    from molserve.models.transformer.modeling import SIZES
    from molserve.models.transformer.tokenizer import tokenize

    molecules = load_bundled("bbb_penetration").smiles[: args.n]
    lengths = np.array([len(tokenize(s)) + 2 for s in molecules])
    # Length-sorted batches, as the worker's batcher and predict path do.
    molecules = sorted(molecules, key=len)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build(args.size, Path(tmp), read_corpus("moses", limit=20000))
        sizes = {p.name: p.stat().st_size for p in Path(tmp).iterdir()
                 if p.suffix in (".onnx", ".safetensors")}
        for backend in ("torch", "onnx", "onnx-int8"):
            run = _Runner(folder, backend, args.threads)
            run(molecules[: args.batch])  # warm-up
            started = time.perf_counter()
            for i in range(0, len(molecules), args.batch):
                run(molecules[i : i + args.batch])
            rates[backend] = len(molecules) / (time.perf_counter() - started)
    shape = SIZES[args.size]
    flops = flops_per_molecule(shape["num_hidden_layers"], shape["hidden_size"],
                               shape["intermediate_size"], float(lengths.mean()))
    print(json.dumps({
        "model": args.size, **shape, "threads": args.threads, "batch": args.batch,
        "molecules": len(molecules),
        "tokens_per_molecule": {
            "mean": float(lengths.mean()), "p50": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)), "p99": float(np.percentile(lengths, 99))},
        "molecules_per_s": {k: round(v, 1) for k, v in rates.items()},
        "onnx_int8_vs_torch": round(rates["onnx-int8"] / rates["torch"], 2),
        "onnx_fp32_vs_torch": round(rates["onnx"] / rates["torch"], 2),
        "file_bytes": sizes,
        "forward_gflops_per_molecule": round(flops / 1e9, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
