"""Directed message-passing networks (Chemprop v2's D-MPNN) with RDKit 2D descriptors: the
Chemprop-RDKit recipe, built, trained and stored without pickles.

A model is described by a JSON spec (`GraphSpec`) from which its modules are rebuilt, and its
weights are a safetensors state dict: the registry never holds a torch checkpoint, and loading
never unpickles. Descriptors are molserve's curated RDKit 2D block (`chem.features`,
`rdkit2d`), signed-log compressed (several are heavy-tailed: counts, surface areas) and then
standardized on the training split by the network's own input transform.

torch, lightning and chemprop are imported inside functions: only the worker and the trainer
pay for them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec, featurize

# The descriptor block the graph models take beside the graph (same columns as the fast tier's).
DESCRIPTOR_SPEC = FeatureSpec(blocks=("rdkit2d",))

Progress = Callable[[str, float, dict[str, Any]], None]


@dataclass(frozen=True)
class GraphSpec:
    """Everything needed to rebuild a trained network's modules (its weights are separate)."""

    task: str  # "regression" | "classification"
    hidden: int = 300  # message size (d_h)
    depth: int = 3  # message-passing steps
    dropout: float = 0.0
    ffn_hidden: int = 300
    ffn_layers: int = 2
    aggregation: str = "norm"  # "norm" (sum / 100, Chemprop's default) or "mean"
    batch_norm: bool = False
    descriptors: int = 0  # width of the descriptor vector (0: graph only)
    descriptor_transform: str = "empirical CDF on the training split (101 knots)"
    featurizer: str = "chemprop v2 SimpleMoleculeMolGraphFeaturizer (default atom and bond features)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainOptions:
    epochs: int = 50
    batch_size: int = 64
    warmup_epochs: int = 2
    init_lr: float = 1e-4
    max_lr: float = 1e-3
    final_lr: float = 1e-4
    patience: int = 10  # epochs without a better validation loss before stopping
    seed: int = 0
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def descriptor_matrix(mols: Sequence) -> np.ndarray:
    """(n, d) raw descriptors of the molecules (the `rdkit2d` block)."""
    if not len(mols):
        return np.zeros((0, DESCRIPTOR_SPEC.width - DESCRIPTOR_SPEC.n_bits), dtype=np.float64)
    return featurize(list(mols), DESCRIPTOR_SPEC).matrix[:, DESCRIPTOR_SPEC.n_bits:].astype(np.float64)


CDF_KNOTS = 101


def fit_cdf(x_train: np.ndarray) -> np.ndarray:
    """(d, CDF_KNOTS) quantiles of each descriptor over the training molecules.

    Descriptors enter the network as their empirical cumulative distribution on the training
    split (in [0, 1]), the way Chemprop-RDKit feeds CDF-normalized descriptors: heavy tails and
    values far outside the training range (a scaffold split's test molecules have them) cannot
    push the network into extrapolation. Standardizing instead cost Caco-2 a third of its MAE."""
    return np.quantile(x_train, np.linspace(0, 1, CDF_KNOTS), axis=0).T.copy()


def apply_cdf(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Descriptors mapped through the training CDF (`fit_cdf`), float32 in [0, 1]."""
    levels = np.linspace(0, 1, knots.shape[1])
    out = np.empty(x.shape, dtype=np.float32)
    for j in range(x.shape[1]):
        column, grid = knots[j], levels
        if column[0] == column[-1]:  # constant on the training split: carries no information
            out[:, j] = 0.5
            continue
        out[:, j] = np.interp(x[:, j], column, grid)
    return out


def _datapoints(mols: Sequence, y: np.ndarray | None, x_d: np.ndarray | None):
    from chemprop.data import MoleculeDatapoint

    points = []
    for i, mol in enumerate(mols):
        target = None if y is None else np.array([y[i]], dtype=np.float32)
        points.append(MoleculeDatapoint(mol=mol, y=target,
                                        x_d=None if x_d is None else x_d[i].copy()))
    return points


def build(spec: GraphSpec, *, target_mean: float = 0.0, target_scale: float = 1.0):
    """The chemprop MPNN a spec describes (untrained, or ready for `load_state_dict`)."""
    from chemprop import nn as cnn
    from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer
    from chemprop.models import MPNN

    featurizer = SimpleMoleculeMolGraphFeaturizer()
    message_passing = cnn.BondMessagePassing(d_v=featurizer.atom_fdim, d_e=featurizer.bond_fdim,
                                             d_h=spec.hidden, depth=spec.depth,
                                             dropout=spec.dropout)
    aggregation = cnn.NormAggregation() if spec.aggregation == "norm" else cnn.MeanAggregation()
    input_dim = spec.hidden + spec.descriptors
    if spec.task == "regression":
        predictor = cnn.RegressionFFN(
            input_dim=input_dim, hidden_dim=spec.ffn_hidden, n_layers=spec.ffn_layers,
            dropout=spec.dropout,
            output_transform=cnn.UnscaleTransform([target_mean], [target_scale]))
    else:
        predictor = cnn.BinaryClassificationFFN(input_dim=input_dim, hidden_dim=spec.ffn_hidden,
                                                n_layers=spec.ffn_layers, dropout=spec.dropout)
    # Descriptors arrive already CDF-normalized (`apply_cdf`), so no input transform.
    return MPNN(message_passing, aggregation, predictor, batch_norm=spec.batch_norm)


def state_arrays(model) -> dict[str, np.ndarray]:
    """The model's weights and buffers as numpy arrays (for safetensors)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_weights(spec: GraphSpec, arrays: dict[str, np.ndarray], device: str = "cpu"):
    """A model rebuilt from its spec with these weights, in evaluation mode."""
    import torch

    model = build(spec)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, strict=True)
    return model.to(device).eval()


def _loader(mols, y, x_d, batch_size: int, shuffle: bool, seed: int):
    from chemprop.data import MoleculeDataset, build_dataloader

    dataset = MoleculeDataset(_datapoints(mols, y, x_d))
    dataset.cache = True  # graphs are built once, not again every epoch
    # chemprop drops a last batch of one molecule unless told not to (for batch norm in
    # training): every molecule is predicted and validated, whatever the batch's size.
    return build_dataloader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
                            num_workers=0, drop_last=None if shuffle else False)


def train(spec: GraphSpec, mols_train: Sequence, y_train: np.ndarray, mols_valid: Sequence,
          y_valid: np.ndarray, x_train: np.ndarray | None, x_valid: np.ndarray | None,
          options: TrainOptions, *, device: str = "cpu", progress: Progress | None = None,
          label: str = "") -> tuple[Any, dict[str, Any]]:
    """Train one network; keep the weights of the epoch with the lowest validation loss (held in
    memory: nothing is written to disk). Returns the model (evaluation mode) and a summary."""
    import lightning.pytorch as pl
    import torch

    _quiet_lightning()
    torch.manual_seed(options.seed)
    np.random.seed(options.seed)
    if options.threads:
        torch.set_num_threads(options.threads)
    mean = float(np.mean(y_train)) if spec.task == "regression" else 0.0
    scale = (float(np.std(y_train)) or 1.0) if spec.task == "regression" else 1.0
    model = build(spec, target_mean=mean, target_scale=scale)
    model.warmup_epochs, model.init_lr = options.warmup_epochs, options.init_lr
    model.max_lr, model.final_lr = options.max_lr, options.final_lr
    # Training targets are standardized; the predictor's output transform undoes it in eval.
    y_fit = (y_train - mean) / scale if spec.task == "regression" else y_train
    y_val = (y_valid - mean) / scale if spec.task == "regression" else y_valid
    train_loader = _loader(mols_train, y_fit, x_train, options.batch_size, True, options.seed)
    valid_loader = _loader(mols_valid, y_val, x_valid, options.batch_size, False, options.seed)
    keeper = _best_weights(options.patience, options.epochs, progress, label)
    trainer = pl.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
                         max_epochs=options.epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[keeper], num_sanity_val_steps=0, deterministic=False)
    started = time.perf_counter()
    trainer.fit(model, train_loader, valid_loader)
    model.load_state_dict(keeper.best_state)
    model.eval()
    summary = {"best_epoch": keeper.best_epoch, "epochs_run": keeper.epochs_run,
               "best_valid_loss": round(keeper.best_loss, 6),
               "seconds": round(time.perf_counter() - started, 1)}
    return model, summary


def _quiet_lightning() -> None:
    """Lightning's start-up banners and tips are noise in a progress bar's terminal and a job's
    log; its warnings about data-loader workers do not apply (graphs are cached in memory)."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|num_workers|does not have many workers).*")


def _best_weights(patience: int, epochs: int, progress: Progress | None, label: str):
    """A callback that keeps the best epoch's weights (by validation loss) in memory, stops
    after `patience` epochs without improvement, and reports progress."""
    import lightning.pytorch as pl

    class BestWeights(pl.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best_loss = float("inf")
            self.best_epoch = -1
            self.best_state: dict = {}
            self.epochs_run = 0

        def on_validation_epoch_end(self, trainer, module) -> None:
            loss = trainer.callback_metrics.get("val_loss")
            if loss is None:
                return
            value = float(loss)
            epoch = trainer.current_epoch
            self.epochs_run = epoch + 1
            if value < self.best_loss:
                self.best_loss, self.best_epoch = value, epoch
                self.best_state = copy.deepcopy(module.state_dict())
            elif epoch - self.best_epoch >= patience:
                trainer.should_stop = True
            if progress is not None:
                progress(f"{label} epoch {epoch + 1}", (epoch + 1) / epochs, {"valid_loss": value})

    return BestWeights()


def predict(models: Sequence, mols: Sequence, x_d: np.ndarray | None, *, batch_size: int = 64,
            device: str = "cpu") -> np.ndarray:
    """(members, n) outputs: regression values in label units, or class-1 probabilities."""
    import torch

    if not len(mols):
        return np.zeros((len(models), 0))
    loader = _loader(mols, None, x_d, batch_size, False, 0)
    outputs = np.zeros((len(models), len(mols)))
    with torch.inference_mode():
        start = 0
        for batch in loader:
            bmg, V_d, X_d, *_ = batch
            bmg.to(device)
            X_d = X_d.to(device) if X_d is not None else None
            for m, model in enumerate(models):
                out = model(bmg, V_d, X_d)[:, 0].float().cpu().numpy()
                outputs[m, start:start + len(out)] = out
            start += len(out)
    return outputs
