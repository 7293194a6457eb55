"""RoBERTa on SMILES: build, pretrain (masked language modelling), fine-tune, export to ONNX.

Every function runs on CPU with tiny models (tests) and on CUDA with full-size ones; the device
is chosen at run time. Mixed precision is used on CUDA only.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

    choice = preferred or os.environ.get("MOLSERVE_DEVICE") or "auto"
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
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Masked-language pretraining of a fresh RoBERTa on SMILES (ChemBERTa's recipe with an
    atom-level tokenizer). Writes model.safetensors, config.json and the tokenizer."""
    import torch
    from transformers import DataCollatorForLanguageModeling, RobertaForMaskedLM

    from molserve.models.transformer.tokenizer import train_tokenizer

    seed_everything(seed)
    device = pick_device(device)
    report = progress or (lambda *a: None)
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
    summary = {"steps": step, "final_loss": float(np.mean(losses[-50:])), "size": size,
               "corpus_molecules": len(corpus), "seconds": round(time.perf_counter() - started, 1),
               "device": device, "parameters": sum(p.numel() for p in model.parameters())}
    (output_dir / "pretraining.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class FineTuneData:
    smiles: list[str]
    labels: np.ndarray
    split: list[str]  # "train" | "valid" | "test" per row
    task: str


def load_base(base: str, task: str, corpus_for_tokenizer: Sequence[str], size: str = "tiny",
              max_length: int = 256):
    """(model, tokenizer) for fine-tuning: a hub id or local directory, or `random:<size>` for a
    freshly initialised RoBERTa with an atom-level tokenizer built from the data."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        RobertaForSequenceClassification,
    )

    num_labels = 1
    problem = "regression" if task == "regression" else "single_label_classification"
    if task == "classification":
        num_labels = 2
    if base.startswith("random:"):
        from molserve.models.transformer.tokenizer import train_tokenizer

        tokenizer = train_tokenizer(corpus_for_tokenizer, model_max_length=max_length)
        config = roberta_config(len(tokenizer), base.split(":", 1)[1] or size, max_length,
                                num_labels=num_labels, problem_type=problem)
        return RobertaForSequenceClassification(config), tokenizer
    # A hub id is downloaded once into the Hugging Face cache when online; a directory is local.
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=num_labels, problem_type=problem, use_safetensors=True)
    return model, tokenizer


def predict_raw(model, tokenizer, smiles: Sequence[str], device: str, batch_size: int = 64,
                max_length: int = 256) -> np.ndarray:
    """Model outputs (regression value or class-1 probability) in input order, with
    length-sorted batches so padding stays small."""
    import torch

    model.eval()
    order = sorted(range(len(smiles)), key=lambda i: len(smiles[i]))
    out = np.zeros(len(smiles), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            encoded = tokenizer([smiles[i] for i in idx], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(device)
            with _autocast(device):
                logits = model(input_ids=encoded["input_ids"],
                               attention_mask=encoded["attention_mask"]).logits.float()
            if logits.shape[-1] == 1:
                values = logits[:, 0]
            else:
                values = torch.softmax(logits, dim=-1)[:, 1]
            out[idx] = values.cpu().numpy()
    return out


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

    Regression labels are standardized for training and restored at prediction time.
    """
    import torch

    seed_everything(seed)
    device = pick_device(device)
    report = progress or (lambda *a: None)
    train = [i for i, s in enumerate(data.split) if s == "train"]
    valid = [i for i, s in enumerate(data.split) if s == "valid"]
    model, tokenizer = load_base(base, data.task, [data.smiles[i] for i in train],
                                 max_length=max_length)
    # RoBERTa reserves two positions after the padding index.
    max_length = min(max_length, model.config.max_position_embeddings - 2)
    model.to(device)
    y = data.labels.astype(np.float64)
    mean = float(y[train].mean()) if data.task == "regression" else 0.0
    scale = float(y[train].std() or 1.0) if data.task == "regression" else 1.0
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
            rows = [train[i] for i in batch]
            encoded = tokenizer([data.smiles[i] for i in rows], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(device)
            if data.task == "regression":
                target = torch.tensor((y[rows] - mean) / scale, dtype=torch.float32, device=device)
            else:
                target = torch.tensor(y[rows], dtype=torch.long, device=device)
            with _autocast(device):
                loss = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                             labels=target).loss
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
        predicted = predict_raw(model, tokenizer, [data.smiles[i] for i in valid], device,
                                max_length=max_length)
        if data.task == "regression":
            score = -float(np.sqrt(np.mean((predicted * scale + mean - y[valid]) ** 2)))
        else:
            from molserve.models.metrics import roc_auc

            score = roc_auc(y[valid], predicted)
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
    return {"history": history, "best_valid_score": best[0], "label_mean": mean, "label_scale": scale,
            "epochs_run": len(history), "seconds": round(time.perf_counter() - started, 1),
            "device": device, "base": base, "max_length": max_length,
            "parameters": sum(p.numel() for p in model.parameters())}


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
