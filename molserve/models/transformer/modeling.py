"""RoBERTa on SMILES: build, pretrain (masked language modelling), fine-tune, export to ONNX.

Every function runs on CPU with tiny models (tests) and on CUDA with full-size ones; the device
is chosen at run time. Mixed precision is used on CUDA only.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Progress = Callable[[str, float, dict], None]

# ChemBERTa-zinc-base-v1's shape: 6 layers, hidden 768, 12 heads (about 44M parameters with its
# 767-token vocabulary).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "chemberta-zinc-base": dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                                intermediate_size=3072),
}


def pick_device(preferred: str | None = None) -> str:
    """`cuda` when a GPU is visible, else `cpu`; MOLSERVE_DEVICE or `preferred` override."""
    import torch

    from molserve.config import ComputeSettings

    choice = preferred or ComputeSettings().device
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def roberta_config(vocab_size: int, size: str = "tiny", max_length: int = 256, **extra: Any):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=vocab_size, max_position_embeddings=max_length + 2, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, **SIZES[size], **extra,
    )


def _batches(n: int, batch_size: int, shuffle: bool, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    if shuffle:
        rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _autocast(device: str):
    import contextlib

    import torch

    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def pretrain(
    corpus: Sequence[str],
    output_dir: Path,
    *,
    size: str = "tiny",
    max_length: int = 128,
    epochs: int = 1,
    max_steps: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    mask_probability: float = 0.15,
    max_seconds: float | None = None,
    seed: int = 0,
    device: str | None = None,
    base: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Masked-language pretraining of a RoBERTa on SMILES (ChemBERTa's recipe with an
    atom-level tokenizer). Writes model.safetensors, config.json and the tokenizer.

    From scratch by default; with `base` (a directory from an earlier run, or a hub id), MLM
    training continues from that model with its tokenizer, e.g. to adapt a public model to a
    team's own compound library, or to extend an earlier run's budget."""
    import torch
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        RobertaForMaskedLM,
    )

    from molserve.models.transformer.tokenizer import train_tokenizer

    seed_everything(seed)
    device = pick_device(device)
    report = progress or (lambda *a: None)
    earlier: dict[str, Any] = {}
    if base:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForMaskedLM.from_pretrained(base, use_safetensors=True).to(device)
        max_length = min(max_length, model.config.max_position_embeddings - 2)
        size = "base"
        summary_file = Path(base) / "pretraining.json"
        if summary_file.is_file():
            earlier = json.loads(summary_file.read_text())
    else:
        tokenizer = train_tokenizer(corpus, model_max_length=max_length)
        model = RobertaForMaskedLM(roberta_config(len(tokenizer), size, max_length)).to(device)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mask_probability)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(corpus) / batch_size)
    total = min(max_steps or steps_per_epoch * epochs, steps_per_epoch * epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * max(0.0, 1 - s / total))
    step, losses, started = 0, [], time.perf_counter()
    model.train()
    while step < total:
        for batch in _batches(len(corpus), batch_size, True, rng):
            encoded = tokenizer([corpus[i] for i in batch], truncation=True, max_length=max_length)
            features = collator([{"input_ids": ids} for ids in encoded["input_ids"]])
            features = {k: v.to(device) for k, v in features.items()}
            with _autocast(device):
                loss = model(**features).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % 10 == 0 or step == total:
                report("pretraining", step / total, {"loss": float(np.mean(losses[-50:]))})
            if step >= total or (max_seconds and time.perf_counter() - started > max_seconds):
                total = step
                break
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    summary = {"steps": step, "final_loss": float(np.mean(losses[-50:])),
               "size": earlier.get("size", size), "corpus_molecules": len(corpus),
               "seconds": round(time.perf_counter() - started, 1), "device": device,
               "parameters": sum(p.numel() for p in model.parameters())}
    if base:
        # Every earlier run of the lineage, so a model's full pretraining budget stays visible.
        own = {k: v for k, v in earlier.items()
               if k not in ("earlier_runs", "total_steps", "total_seconds")}
        lineage = [*earlier.get("earlier_runs", []), own] if earlier else []
        summary.update(continued_from=base, earlier_runs=lineage,
                       total_steps=step + sum(int(r.get("steps", 0)) for r in lineage),
                       total_seconds=round(summary["seconds"]
                                           + sum(float(r.get("seconds", 0)) for r in lineage), 1))
    (output_dir / "pretraining.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class FineTuneData:
    """Rows to fine-tune on. One task: `labels` is (n,) and `split` says each row's side.
    Several tasks (one head output each): `labels` is (n, T) with NaN where a molecule has no
    label, `label_split` (n, T) gives each label's side in its own endpoint's split, and `split`
    is the row's side for batching (see `pipeline.merge_endpoints`)."""

    smiles: list[str]
    labels: np.ndarray
    split: list[str]  # "train" | "valid" | "test" per row
    task: str  # "regression" | "classification" | "multitask"
    task_names: list[str] = field(default_factory=list)
    task_kinds: list[str] = field(default_factory=list)
    label_split: np.ndarray | None = None

    @property
    def multitask(self) -> bool:
        return self.labels.ndim == 2

    def matrix(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(labels (n, T), label sides (n, T), task kinds) for one or several tasks."""
        if self.multitask:
            assert self.label_split is not None
            return self.labels.astype(np.float64), self.label_split, list(self.task_kinds)
        return (self.labels.astype(np.float64)[:, None], np.array(self.split, dtype=object)[:, None],
                [self.task])


def head_spec(kinds: Sequence[str], names: Sequence[str], means: Sequence[float],
              scales: Sequence[float], single: bool) -> list[dict[str, Any]]:
    """How to read each model output: a standardized regression value, or a class-1 probability
    (softmax over two logits for a one-task classifier, a sigmoid per task otherwise)."""
    heads = []
    for i, (kind, name) in enumerate(zip(kinds, names, strict=True)):
        if kind == "regression":
            heads.append({"endpoint": name, "task": kind, "output": i, "activation": "identity",
                          "label_mean": float(means[i]), "label_scale": float(scales[i])})
        else:
            heads.append({"endpoint": name, "task": kind, "output": i,
                          "activation": "softmax" if single else "sigmoid"})
    return heads


def decode_logits(logits: np.ndarray, heads: Sequence[dict[str, Any]]) -> np.ndarray:
    """Model logits (n, outputs) -> values in label units or probabilities, (n, len(heads))."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty((logits.shape[0], len(heads)), dtype=np.float64)
    for column, head in enumerate(heads):
        if head["activation"] == "softmax":
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[:, column] = shifted[:, 1] / shifted.sum(axis=1)
        elif head["activation"] == "sigmoid":
            out[:, column] = 1.0 / (1.0 + np.exp(-logits[:, head["output"]]))
        else:
            out[:, column] = logits[:, head["output"]] * head["label_scale"] + head["label_mean"]
    return out


def load_base(base: str, num_outputs: int, corpus_for_tokenizer: Sequence[str], size: str = "tiny",
              max_length: int = 256):
    """(model, tokenizer) for fine-tuning with `num_outputs` head outputs: a hub id or local
    directory, or `random:<size>` for a freshly initialised RoBERTa with an atom-level tokenizer
    built from the data. The loss is computed here, not by the model, so the problem type is
    only a label."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        RobertaForSequenceClassification,
    )

    if base.startswith("random:"):
        from molserve.models.transformer.tokenizer import train_tokenizer

        tokenizer = train_tokenizer(corpus_for_tokenizer, model_max_length=max_length)
        config = roberta_config(len(tokenizer), base.split(":", 1)[1] or size, max_length,
                                num_labels=num_outputs, problem_type="regression")
        return RobertaForSequenceClassification(config), tokenizer
    # A hub id is downloaded once into the Hugging Face cache when online; a directory is local.
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=num_outputs, problem_type="regression", use_safetensors=True)
    return model, tokenizer


def predict_logits(model, tokenizer, smiles: Sequence[str], device: str, batch_size: int = 64,
                   max_length: int = 256) -> np.ndarray:
    """Model logits (n, outputs) in input order, with length-sorted batches so padding stays
    small. `decode_logits` turns them into values."""
    import torch

    model.eval()
    order = sorted(range(len(smiles)), key=lambda i: len(smiles[i]))
    out = np.zeros((len(smiles), model.config.num_labels), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            encoded = tokenizer([smiles[i] for i in idx], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(device)
            with _autocast(device):
                logits = model(input_ids=encoded["input_ids"],
                               attention_mask=encoded["attention_mask"]).logits.float()
            out[idx] = logits.cpu().numpy()
    return out


def onnx_logits(path: Path, tokenizer, smiles: Sequence[str], batch_size: int = 64,
                max_length: int = 256) -> np.ndarray:
    """`predict_logits` for an exported ONNX file (fp32 or int8), as a worker serving it
    computes them: what the served artifact is evaluated and calibrated with."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    order = sorted(range(len(smiles)), key=lambda i: len(smiles[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        encoded = tokenizer([smiles[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="np")
        logits = session.run(None, {"input_ids": encoded["input_ids"].astype(np.int64),
                                    "attention_mask": encoded["attention_mask"].astype(np.int64)})[0]
        if out is None:
            out = np.zeros((len(smiles), logits.shape[1]), dtype=np.float64)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 1))


def _masked_loss(logits, target, mask, heads: Sequence[dict[str, Any]]):
    """Mean over tasks of each task's mean loss over its labelled rows (MSE on standardized
    regression labels, cross-entropy for classification); unlabelled entries count for nothing."""
    import torch
    import torch.nn.functional as F

    losses = []
    for column, head in enumerate(heads):
        labelled = mask[:, column]
        if not bool(labelled.any()):
            continue
        y = target[labelled, column]
        if head["activation"] == "softmax":
            losses.append(F.cross_entropy(logits[labelled], y.long()))
        elif head["activation"] == "sigmoid":
            losses.append(F.binary_cross_entropy_with_logits(logits[labelled, head["output"]], y))
        else:
            losses.append(F.mse_loss(logits[labelled, head["output"]], y))
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def validation_score(y: np.ndarray, sides: np.ndarray, values: np.ndarray,
                     heads: Sequence[dict[str, Any]]) -> float:
    """Higher is better. One task: -RMSE (label units) or ROC AUC. Several tasks: the mean over
    tasks of -RMSE/label std for regression and ROC AUC - 1 for classification, so tasks in
    different units weigh alike."""
    from molserve.models.metrics import roc_auc

    scores = []
    for column, head in enumerate(heads):
        rows = (sides[:, column] == "valid") & ~np.isnan(y[:, column])
        if not rows.any():
            continue
        if head["task"] == "regression":
            rmse = float(np.sqrt(np.mean((values[rows, column] - y[rows, column]) ** 2)))
            scores.append(-rmse if len(heads) == 1 else -rmse / head["label_scale"])
        else:
            auc = roc_auc(y[rows, column], values[rows, column])
            scores.append(auc if len(heads) == 1 else auc - 1.0)
    scores = [x for x in scores if math.isfinite(x)]
    return float(np.mean(scores)) if scores else float("-inf")


def finetune(
    data: FineTuneData,
    base: str,
    output_dir: Path,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    patience: int = 5,
    max_length: int = 256,
    seed: int = 0,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune with early stopping on the validation split; keep the best epoch's weights.

    Regression labels are standardized for training (per task) and restored at prediction time.
    With several tasks the head has one output per task and the loss skips missing labels.
    """
    import torch

    seed_everything(seed)
    device = pick_device(device)
    report = progress or (lambda *a: None)
    y, sides, kinds = data.matrix()
    names = data.task_names or [data.task]
    row_side = np.array(data.split, dtype=object)
    train = np.flatnonzero(row_side == "train")
    valid = np.flatnonzero((sides == "valid").any(axis=1))
    # Labels the model learns from: on training rows, in their own endpoint's training split.
    learn = (sides == "train") & (row_side == "train")[:, None] & ~np.isnan(y)
    means = [float(np.nanmean(np.where(learn[:, t], y[:, t], np.nan))) if k == "regression" else 0.0
             for t, k in enumerate(kinds)]
    scales = [float(np.nanstd(np.where(learn[:, t], y[:, t], np.nan)) or 1.0) if k == "regression"
              else 1.0 for t, k in enumerate(kinds)]
    heads = head_spec(kinds, names, means, scales, single=not data.multitask)
    outputs = 2 if heads[0]["activation"] == "softmax" else len(heads)
    model, tokenizer = load_base(base, outputs, [data.smiles[i] for i in train], max_length=max_length)
    # RoBERTa reserves two positions after the padding index.
    max_length = min(max_length, model.config.max_position_embeddings - 2)
    model.to(device)
    scaled = np.where(learn, (np.nan_to_num(y) - np.array(means)) / np.array(scales), 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    steps = epochs * math.ceil(len(train) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    scaler = torch.amp.GradScaler("cuda") if device.startswith("cuda") else None
    rng = random.Random(seed)
    best: tuple[float, dict] | None = None
    history, stale, started = [], 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        losses = []
        for batch in _batches(len(train), batch_size, True, rng):
            rows = train[batch]
            encoded = tokenizer([data.smiles[i] for i in rows], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(device)
            target = torch.tensor(scaled[rows], dtype=torch.float32, device=device)
            mask = torch.tensor(learn[rows], dtype=torch.bool, device=device)
            with _autocast(device):
                logits = model(input_ids=encoded["input_ids"],
                               attention_mask=encoded["attention_mask"]).logits
            loss = _masked_loss(logits.float(), target, mask, heads)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        values = np.full(y.shape, np.nan)
        values[valid] = decode_logits(predict_logits(model, tokenizer, [data.smiles[i] for i in valid],
                                                     device, max_length=max_length), heads)
        score = validation_score(y, sides, values, heads)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "valid_score": score})
        report("fine-tuning", (epoch + 1) / epochs, history[-1])
        if best is None or score > best[0]:
            best = (score, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    assert best is not None
    model.load_state_dict(best[1])
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    summary = {"history": history, "best_valid_score": best[0], "heads": heads,
               "epochs_run": len(history), "seconds": round(time.perf_counter() - started, 1),
               "device": device, "base": base, "max_length": max_length,
               "training_labels": int(learn.sum()),
               "parameters": sum(p.numel() for p in model.parameters())}
    if not data.multitask:
        summary.update(label_mean=means[0], label_scale=scales[0])
    return summary


def export_onnx(model_dir: Path, output: Path, quantize: bool = False) -> Path:
    """Export a fine-tuned model to ONNX (dynamic batch and length); optionally int8-quantize
    the weights (dynamic quantization) into a second file next to it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (ids, mask), str(output), input_names=["input_ids", "attention_mask"],
            output_names=["logits"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                          "attention_mask": {0: "batch", 1: "length"}, "logits": {0: "batch"}},
        )
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = output.with_name(output.stem + ".int8.onnx")
        quantize_dynamic(str(output), str(quantized), weight_type=QuantType.QInt8)
        return quantized
    return output
