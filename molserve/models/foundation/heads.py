"""The heads a foundation model may put on the MiniMol embedding, and how each is fitted.

Three kinds compete for each endpoint (`molserve.models.foundation.pipeline` chooses among them
by scaffold cross-validation):
- `trees`: gradient-boosted trees (LightGBM) on the 512-dimensional embedding;
- `trees+fast`: the same on the embedding joined with the endpoint's fast-tier features (the
  fast model's own feature recipe: Morgan counts, RDKit descriptors, ...);
- `mlp`: a small network on the embedding, the head of the MiniMol paper (blocks of Linear,
  BatchNorm, ReLU and Dropout 0.1, the embedding joined again before the output layer; Adam
  with weight decay, warm-up and cosine decay).

Trees are stored as flat arrays (safetensors, evaluated with numpy: `molserve.models.trees`)
and in LightGBM's text format; networks as safetensors weights beside a JSON spec. Never a
pickle. LightGBM and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

HEAD_KINDS = ("trees", "trees+fast", "mlp")


@dataclass(frozen=True)
class TreeOptions:
    learning_rate: float = 0.05
    classification_learning_rate: float = 0.1
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.3
    lambda_l2: float = 1.0
    max_rounds: int = 2000
    early_stopping: int = 100
    min_rounds: int = 50
    threads: int = 2

    def params(self, task: str, seed: int, bagged: bool) -> dict[str, Any]:
        params = {
            "objective": "binary" if task == "classification" else "regression",
            "learning_rate": self.classification_learning_rate if task == "classification"
            else self.learning_rate,
            "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction, "lambda_l2": self.lambda_l2,
            "verbose": -1, "seed": seed, "num_threads": self.threads, "deterministic": True,
            "force_col_wise": True,
        }
        if bagged:
            params.update(bagging_fraction=0.8, bagging_freq=1)
        return params


def tree_rounds(x: np.ndarray, z: np.ndarray, train: np.ndarray, valid: np.ndarray, task: str,
                options: TreeOptions, seed: int) -> int:
    """Boosting rounds chosen by early stopping on the validation side (train side fitted)."""
    import lightgbm as lgb

    booster = lgb.train(options.params(task, seed, False),
                        lgb.Dataset(x[train], z[train], params={"verbose": -1}),
                        num_boost_round=options.max_rounds,
                        valid_sets=[lgb.Dataset(x[valid], z[valid], params={"verbose": -1})],
                        callbacks=[lgb.early_stopping(options.early_stopping, verbose=False)])
    return max(options.min_rounds, booster.best_iteration or options.max_rounds)


def fit_trees(x: np.ndarray, z: np.ndarray, rows: np.ndarray, task: str, rounds: int,
              options: TreeOptions, seed: int):
    """One LightGBM booster on `rows`, `rounds` rounds, bagged."""
    import lightgbm as lgb

    return lgb.train(options.params(task, seed, True),
                     lgb.Dataset(x[rows], z[rows], params={"verbose": -1}), num_boost_round=rounds)


@dataclass(frozen=True)
class MLPSpec:
    """The network of the MiniMol paper's heads, sized for a CPU."""

    task: str
    inputs: int = 512
    hidden: int = 512
    blocks: int = 2
    dropout: float = 0.1
    epochs: int = 25
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    warmup_share: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MLPSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def build_mlp(spec: MLPSpec):
    """The network: `blocks` x (Linear, BatchNorm, ReLU, Dropout), then the embedding joined
    again with the last hidden layer before one output (a value, or a class-1 logit)."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            width = spec.inputs
            for _ in range(spec.blocks):
                layers += [nn.Linear(width, spec.hidden), nn.BatchNorm1d(spec.hidden), nn.ReLU(),
                           nn.Dropout(spec.dropout)]
                width = spec.hidden
            self.body = nn.Sequential(*layers)
            self.out = nn.Linear(spec.hidden + spec.inputs, 1)

        def forward(self, x):
            return self.out(torch.cat([self.body(x), x], dim=1)).squeeze(1)

    return Head()


def fit_mlp(spec: MLPSpec, x: np.ndarray, z: np.ndarray, seed: int, device: str = "cpu"):
    """Train one network on standardized inputs `x` and targets `z` (regression: already
    standardized by the caller; classification: 0/1).

    On a CPU the steps run on one thread: a batch of 32 x 512 is too small for intra-op threads
    to pay for their synchronization (2 epochs of 4,000 rows: 9.1 s on two threads, 1.6 s on one,
    on a busy 2-core machine)."""
    import torch

    if device == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _fit_mlp(spec, x, z, seed, device)
        finally:
            torch.set_num_threads(threads)
    return _fit_mlp(spec, x, z, seed, device)


def _fit_mlp(spec: MLPSpec, x: np.ndarray, z: np.ndarray, seed: int, device: str):
    import torch

    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model = build_mlp(spec).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate,
                                  weight_decay=spec.weight_decay)
    n = len(x)
    steps_per_epoch = max(1, n // spec.batch_size)  # the last partial batch is dropped (BatchNorm)
    total = steps_per_epoch * spec.epochs
    warmup = max(1, int(total * spec.warmup_share))

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    loss_fn = (torch.nn.BCEWithLogitsLoss() if spec.task == "classification"
               else torch.nn.MSELoss())
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    zt = torch.as_tensor(z, dtype=torch.float32, device=device)
    model.train()
    for _ in range(spec.epochs):
        order = torch.as_tensor(generator.permutation(n), device=device)
        for step in range(steps_per_epoch):
            rows = order[step * spec.batch_size:(step + 1) * spec.batch_size]
            if len(rows) < 2:
                continue
            optimizer.zero_grad()
            loss = loss_fn(model(xt[rows]), zt[rows])
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return model.cpu()


def mlp_outputs(models: list, x: np.ndarray, device: str = "cpu", block: int = 4096) -> np.ndarray:
    """(members, n) raw outputs of trained networks (standardized values or logits)."""
    import torch

    out = np.zeros((len(models), len(x)), dtype=np.float64)
    with torch.inference_mode():
        for m, model in enumerate(models):
            model.to(device).eval()
            for start in range(0, len(x), block):
                chunk = torch.as_tensor(x[start:start + block], dtype=torch.float32, device=device)
                out[m, start:start + block] = model(chunk).double().cpu().numpy()
    return out


def mlp_state(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}


def load_mlp(spec: MLPSpec, arrays: dict[str, np.ndarray], device: str = "cpu"):
    import torch

    model = build_mlp(spec)
    model.load_state_dict({name: torch.as_tensor(value) for name, value in arrays.items()})
    return model.to(device).eval()
