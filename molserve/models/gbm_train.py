"""Train a fast-tier model: curated data, a model-selection split, a cross-fitted LightGBM
ensemble, conformal intervals from out-of-fold predictions, applicability domain, registry write.

The data a model is fitted on (all of it but the test set: TDC's `train_val`, or 90% of a
user's file) is used twice and never more:
1. Selection: on a split of it (train / valid; TDC's own scaffold split for the benchmark
   datasets) each candidate recipe (feature blocks, tree shape) is boosted with early stopping;
   the recipe with the best validation score, and its number of rounds, win. A calibration set
   (a fifth of the train side, drawn as the split draws its test side: the rarest scaffolds for
   a scaffold split) is never a validation molecule, so it chooses nothing.
2. The served ensemble: the same data in `folds` scaffold folds; member k is trained on every
   fold but k with the chosen rounds. Each molecule is thus predicted once by a member that
   never saw it. The out-of-fold predictions of the calibration molecules, which never chose
   the recipe or the rounds, calibrate the intervals (at 80, 90 and 95%) and the
   classifiers' probabilities; those of every fitted molecule set the domain threshold.
The test set (TDC's test file, or 10% of a user's file) is predicted at the end and never
informs a choice.

Imports LightGBM, so it runs in the CLI or a job process, never in the gateway. The ensemble is
stored twice: as flat tree arrays (safetensors) that the gateway evaluates with numpy, and in
LightGBM's own text format for anyone who wants to inspect it with LightGBM.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from molserve.chem.features import FeatureBatch, FeatureSpec, featurize, union_spec
from molserve.chem.molecules import largest_fragment, try_parse
from molserve.chem.similarity import SimilarityIndex
from molserve.data.curation import CuratedData, curate
from molserve.data.dataset import Dataset
from molserve.data.splits import random_split, scaffold_folds, scaffold_split, tdc_scaffold_split
from molserve.models import metrics as M
from molserve.models.baseline import ridge_baseline
from molserve.models.gbm_runtime import TargetTransform
from molserve.models.trees import from_lightgbm
from molserve.registry.store import Artifact, Registry

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Recipe:
    """How one fast model is built: its feature blocks and its trees."""

    blocks: tuple[str, ...] = ("rdkit2d",)
    descriptors: tuple[str, ...] = ()
    num_leaves: int = 31
    max_depth: int = -1
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.4
    lambda_l2: float = 1.0
    objective: str = "auto"  # regression: "l2", "l1" or "huber"; classification: always binary

    def spec(self) -> FeatureSpec:
        return FeatureSpec(descriptors=self.descriptors, blocks=self.blocks)

    def lgb_params(self, task: str, learning_rate: float, seed: int, threads: int,
                   bagged: bool, rows: int | None = None) -> dict:
        """LightGBM's parameters. With `rows` (the rows a model is trained on), a leaf needs at
        most a tenth of them (at least 3): a team's 50-row assay leaves each ensemble member
        about 32 bagged rows, and leaves of 20 could not split them at all (a constant model).
        The rule changes a model only where it trains on fewer than 200 rows (of the bundled
        ones, the smallest sets under TDC's protocol, such as carcinogenicity, by a row or two)."""
        leaf = self.min_data_in_leaf if rows is None else min(self.min_data_in_leaf, max(3, rows // 10))
        if task == "classification":
            objective = "binary"
        else:
            objective = {"auto": "regression", "l2": "regression", "l1": "regression_l1",
                         "huber": "huber"}[self.objective]
        params = {
            "objective": objective, "learning_rate": learning_rate,
            "num_leaves": self.num_leaves, "max_depth": self.max_depth,
            "min_data_in_leaf": leaf, "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2, "use_missing": False, "verbose": -1, "seed": seed,
            "num_threads": threads, "deterministic": True, "force_col_wise": True,
        }
        if bagged:
            params.update(bagging_fraction=0.8, bagging_freq=1)
        return params

    def to_dict(self) -> dict:
        data = asdict(self)
        data["blocks"], data["descriptors"] = list(self.blocks), list(self.descriptors)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        for name in ("blocks", "descriptors"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)


@dataclass(frozen=True)
class TrainingProfile:
    """How hard to search. `standard` is what `make serve` and `molserve train` use."""

    recipes: tuple[Recipe, ...]
    learning_rate: float  # regression
    max_rounds: int
    early_stopping: int
    folds: int  # members of the served ensemble, one per held-out scaffold fold
    min_rounds: int = 1
    threads: int = 2
    # Classifiers: the same scores at twice the rate (half the trees, a faster first start), as
    # measured on TDC's sets; regression lost about 1% at 0.1.
    classification_learning_rate: float | None = None

    def rate(self, task: str) -> float:
        if task == "classification" and self.classification_learning_rate:
            return self.classification_learning_rate
        return self.learning_rate


PROFILES = {
    "standard": TrainingProfile(
        recipes=(
            Recipe(blocks=("rdkit2d", "erg")),
            Recipe(blocks=("rdkit2d",)),
            Recipe(blocks=("rdkit2d", "erg", "avalon")),
        ),
        # Classifiers boost at 0.05 like regressors: 0.1 was chosen on TDC's test files; scaffold
        # cross-validation inside train_val preferred 0.05 on 11 of 13 classification datasets
        # (benchmarks.bench_decisions, BENCHMARKS.md "Choices without test feedback").
        learning_rate=0.05, max_rounds=2000, early_stopping=100, folds=5, min_rounds=50,
    ),
    # For tests: the same pipeline with a smaller search.
    "quick": TrainingProfile(
        recipes=(Recipe(blocks=("rdkit2d",), num_leaves=15, max_depth=6, min_data_in_leaf=10,
                        feature_fraction=0.5),),
        learning_rate=0.15, max_rounds=120, early_stopping=20, folds=3,
    ),
}

CONFIDENCE = 0.9  # the interval answered when no confidence is asked for
CONFIDENCE_LEVELS = (0.8, 0.9, 0.95)
CALIBRATION_SHARE = 5  # one scaffold fold in this many of the train side calibrates
CALIBRATION_RULE = "random"  # how the calibration molecules are drawn (calibration_molecules)


def calibration_molecules(mols: Sequence, train: np.ndarray, seed: int,
                          rule: str = "rarest_scaffolds") -> np.ndarray:
    """Indices (into `mols`) of the calibration set: a `1 / CALIBRATION_SHARE` share of the
    selection's train side. None of them validates (chooses the recipe or the rounds), and each
    is predicted by the ensemble member that never saw it, so their errors say how wrong the
    model is on molecules it has not seen.

    `rule="random"` (what training uses, `CALIBRATION_RULE`): a random fifth of the train side.
    `rule="rarest_scaffolds"`: the train side's rarest Bemis-Murcko scaffold groups, smallest
    first (ties in a seeded order), up to a fifth, as a scaffold split draws its test side. The
    rarest groups had been chosen on TDC's test files; scaffold cross-validation inside train_val
    (benchmarks.bench_decisions) found the random fifth's coverage nearer 90% on 5 of TDC's 9
    regression datasets, and it is what training uses now."""
    import random
    from collections import defaultdict

    from molserve.data.splits import murcko_scaffold

    if len(train) < 2 * CALIBRATION_SHARE:
        return np.zeros(0, dtype=np.int64)
    target = len(train) // CALIBRATION_SHARE
    if rule == "random":
        order = train.tolist()
        random.Random(seed + 1000).shuffle(order)
        return np.array(sorted(order[:target]), dtype=np.int64)
    groups: dict[str, list[int]] = defaultdict(list)
    for i in train.tolist():
        groups[murcko_scaffold(mols[i])].append(i)
    ordered = list(groups.values())
    random.Random(seed + 1000).shuffle(ordered)
    ordered.sort(key=len)  # stable: equal sizes keep the seeded order
    chosen: list[int] = []
    for group in ordered:
        if len(chosen) + len(group) > target:
            break
        chosen.extend(group)
    return np.array(sorted(chosen), dtype=np.int64)


def conformal_quantile(scores: np.ndarray, confidence: float) -> float:
    """Split-conformal quantile: the ceil((n + 1) * confidence)-th smallest score (the largest
    when there are too few for that level)."""
    n = len(scores)
    if n == 0:
        return float("inf")
    rank = min(n, math.ceil((n + 1) * confidence))
    return float(np.sort(scores)[rank - 1])


def fit_platt(raw: np.ndarray, y: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """(a, b) of sigmoid(a * raw + b) fitted to labels `y` by Newton's method on the log loss
    (Platt scaling on raw margins), with a small ridge on (a - 1, b) for stability."""
    a, b = 1.0, 0.0
    ridge = 1e-3
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * raw + b)))
        w = p * (1 - p)
        g = np.array([np.sum((p - y) * raw) + ridge * (a - 1), np.sum(p - y) + ridge * b])
        h = np.array([[np.sum(w * raw * raw) + ridge, np.sum(w * raw)],
                      [np.sum(w * raw), np.sum(w) + ridge]])
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(b)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# On TDC's classifiers (5 seeds), Platt scaling chosen on 80-120 calibration molecules raised
# the test calibration error more often than it lowered it: below this many it is not tried.
MIN_PLATT = 200
# Above it, the map is applied where its cross-fitted log loss on the calibration molecules is
# lower. It was once switched off after looking at TDC's test files; re-decided without them
# (scaffold cross-validation inside train_val, benchmarks.bench_decisions), applying it lowered
# the out-of-fold calibration error on 9 of 13 classification datasets, so it is on.
APPLY_PLATT = True


def choose_probability_calibration(raw: np.ndarray, y: np.ndarray, seed: int,
                                   apply: bool | None = None) -> dict:
    """Platt scaling of the members' margins, fitted on the calibration molecules' out-of-fold
    margins and applied only where it helps: on two halves of them, each half scored with the
    map fitted on the other, it must lower the log loss. Monotone (a > 0), so rankings (ROC AUC,
    PR AUC) are unchanged."""
    y = np.asarray(y, dtype=np.float64)
    record: dict = {"method": "Platt scaling of each member's margin (sigmoid(a * margin + b))",
                    "fitted_on": f"{len(y)} calibration molecules' out-of-fold margins",
                    "applied": False, "a": 1.0, "b": 0.0}
    if len(y) < MIN_PLATT or len(np.unique(y)) < 2:
        record["reason"] = (f"fewer than {MIN_PLATT} calibration molecules (or one class): the "
                            "cross-fitted comparison is too noisy to decide on")
        return record
    order = np.random.default_rng(seed).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2 :])
    before = after = 0.0
    for fit_on, score_on in (halves, halves[::-1]):
        a, b = fit_platt(raw[fit_on], y[fit_on])
        before += _log_loss(y[score_on], 1 / (1 + np.exp(-raw[score_on]))) * len(score_on)
        after += _log_loss(y[score_on], 1 / (1 + np.exp(-(a * raw[score_on] + b)))) * len(score_on)
    a, b = fit_platt(raw, y)
    record["cross_fitted_log_loss"] = {"uncalibrated": round(before / len(y), 5),
                                       "calibrated": round(after / len(y), 5)}
    if not (APPLY_PLATT if apply is None else apply):
        record.update(a_fitted=a, b_fitted=b, reason="not applied: switched off")
    elif after < before and a > 0:
        record.update(applied=True, a=a, b=b)
    else:
        record["reason"] = "it did not lower the cross-fitted log loss"
    return record


class FeatureCache:
    """Features of molecules already featurized in this process, by canonical SMILES and spec
    (bootstrap trains forty-odd endpoints whose datasets share many molecules)."""

    def __init__(self) -> None:
        self._rows: dict[FeatureSpec, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def featurize(self, keys: Sequence[str], mols: Sequence, spec: FeatureSpec) -> FeatureBatch:
        known = self._rows.setdefault(spec, {})
        missing = [i for i, key in enumerate(keys) if key not in known]
        if missing:
            fresh = featurize([mols[i] for i in missing], spec)
            for row, i in enumerate(missing):
                known[keys[i]] = (fresh.matrix[row], fresh.on_bits[row])
        matrix = np.stack([known[k][0] for k in keys]) if keys else np.zeros((0, spec.width), np.float32)
        return FeatureBatch(matrix, [known[k][1] for k in keys])


def _metric_score(metric: str, task: str, y: np.ndarray, prediction: np.ndarray) -> float:
    """Higher is better, for model selection."""
    if metric:
        value = M.tdc_metric(metric, y, prediction)
        return -value if metric == "mae" else value
    if task == "classification":
        m = M.classification_metrics(y, prediction)
        return m["roc_auc"] - 1e-3 * m["log_loss"]
    return -float(np.sqrt(np.mean((y - prediction) ** 2)))


@dataclass
class _Sides:
    fit: np.ndarray  # every molecule the served model is trained on (train + valid)
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    method: str


def _sides_from_labels(curated: CuratedData, labels: Sequence[str]) -> list[str]:
    """Each curated molecule's side, from the sides of the input rows merged into it (a molecule
    with rows on several sides is trained on, never held out)."""
    sides = []
    for rows in curated.rows:
        found = {labels[r] for r in rows}
        sides.append(found.pop() if len(found) == 1 else "train")
    return sides


def _choose_sides(dataset: Dataset, curated: CuratedData, *, split: str, seed: int,
                  split_labels: Sequence[str] | None, has_test: bool) -> _Sides:
    n = len(curated.canonical_smiles)
    method = split
    if split_labels is not None:
        sides = _sides_from_labels(curated, split_labels)
        method = f"{split} (stored)"
    elif split == "tdc-scaffold":
        parts = tdc_scaffold_split(dataset.smiles, seed)
        labels = ["train"] * len(dataset)
        for i in parts["valid"]:
            labels[i] = "valid"
        sides = _sides_from_labels(curated, labels)
        method = "TDC scaffold split of train_val (87.5/12.5), as get_train_valid_split"
    else:
        sizes = (0.875, 0.125, 0.0) if has_test else (0.8, 0.1, 0.1)
        parts = (scaffold_split(curated.mols, sizes, seed=seed) if split == "scaffold"
                 else random_split(n, sizes, seed=seed))
        sides = ["train"] * n
        for side in ("valid", "test"):
            for i in parts[side]:
                sides[i] = side
    index = {s: np.array([i for i, v in enumerate(sides) if v == s], dtype=np.int64)
             for s in ("train", "valid", "test")}
    if len(index["train"]) < 5 or len(index["valid"]) < 5 or (not has_test and len(index["test"]) < 5):
        parts = random_split(n, (0.875, 0.125, 0.0) if has_test else (0.8, 0.1, 0.1), seed=seed)
        index = {s: np.array(parts[s], dtype=np.int64) for s in ("train", "valid", "test")}
        method = "random (the requested split left a side with fewer than 5 molecules)"
    fit = np.sort(np.concatenate([index["train"], index["valid"]]))
    return _Sides(fit, index["train"], index["valid"], index["test"], method)


def _parse_rows(smiles: Sequence[str]) -> tuple[list[str], list, list[str]]:
    """Canonical parent SMILES and molecules of a test set's rows, with reasons for failures."""
    from rdkit import Chem

    keys, mols, errors = [], [], []
    for text in smiles:
        parsed = try_parse(text)
        if hasattr(parsed, "mol"):
            parent = largest_fragment(parsed.mol)
            keys.append(Chem.MolToSmiles(parent))
            mols.append(parent)
            errors.append("")
        else:
            keys.append("")
            mols.append(None)
            errors.append(parsed.reason)
    return keys, mols, errors


def train_endpoint(
    dataset: Dataset,
    registry: Registry,
    endpoint: str,
    *,
    test: Dataset | None = None,
    split: str = "scaffold",
    profile: str = "standard",
    seed: int = 0,
    split_labels: list[str] | None = None,
    recipes: Sequence[Recipe] | None = None,
    target_transform: TargetTransform | None = None,
    metric: str = "",
    extra_manifest: dict | None = None,
    feature_cache: FeatureCache | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    hold_out: bool = True,
    on_fitted: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> Artifact:
    """Train, evaluate and register a fast-tier model for `endpoint`; return the artifact.

    `test` is a fixed test set scored row by row (TDC's test file); without it, a test split of
    `dataset` is held out. `split` is how the model-selection split is made: "scaffold",
    "random", or "tdc-scaffold" (TDC's own split of train_val, seed `seed`). `split_labels`
    (train/valid/test per dataset row) replaces the computed split. `recipes` replaces the
    profile's candidates; `metric` (a TDC metric name) is what selection maximizes. With
    `hold_out=False` (production models) nothing is held out: every labelled row is fitted, the
    split only chooses (train / valid), and the quality figures are the out-of-fold ones.
    `on_fitted` (molserve.models.on_base) combines the model with bases before it is written.
    """
    artifact, _ = fit_and_evaluate(
        dataset, endpoint, test=test, split=split, profile=profile, seed=seed,
        split_labels=split_labels, recipes=recipes, target_transform=target_transform,
        metric=metric, feature_cache=feature_cache, threads=threads, progress=progress,
        registry=registry, extra_manifest=extra_manifest, hold_out=hold_out, on_fitted=on_fitted)
    assert artifact is not None
    return artifact


def fit_and_evaluate(
    dataset: Dataset,
    endpoint: str,
    *,
    test: Dataset | None = None,
    split: str = "scaffold",
    profile: str = "standard",
    seed: int = 0,
    split_labels: Sequence[str] | None = None,
    recipes: Sequence[Recipe] | None = None,
    target_transform: TargetTransform | None = None,
    metric: str = "",
    feature_cache: FeatureCache | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
    extra_manifest: dict | None = None,
    hold_out: bool = True,
    on_fitted: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> tuple[Artifact | None, dict]:
    """The training pipeline; registers the model when `registry` is given.

    Returns (artifact or None, result) where result holds the test predictions in the order of
    the test set's rows (`test_predictions`, NaN for unreadable rows) and the test metrics, which
    is what a benchmark needs.
    """
    import lightgbm as lgb

    # Subsets of one binned Dataset share its parameters; LightGBM warns about it on each use.
    warnings.filterwarnings("ignore", message="Overriding the parameters from Reference Dataset")
    report = progress or (lambda step, fraction: None)
    settings = PROFILES[profile]
    if threads is not None:
        settings = replace(settings, threads=threads)
    candidates = tuple(recipes) if recipes else settings.recipes
    transform = target_transform or TargetTransform()
    task = dataset.task
    started = time.perf_counter()
    report("curating", 0.02)
    curated = curate(dataset)
    n = len(curated.canonical_smiles)
    if n < 30:
        raise ValueError(f"{n} usable molecules after curation; at least 30 are needed")
    y = curated.labels
    if task == "classification" and len(np.unique(y)) < 2:
        raise ValueError("classification data needs both classes; the labels read were all "
                         f"{int(y[0]) if len(y) else '?'} (see --positive-label)")
    if not hold_out and (test is not None or split_labels is not None):
        raise ValueError("a production model (hold_out=False) fits every row: give no test set "
                         "and no stored split")
    sides = _choose_sides(dataset, curated, split=split, seed=seed, split_labels=split_labels,
                          has_test=test is not None or not hold_out)
    if not hold_out and len(sides.test):  # a split's rounding may leave a molecule on that side
        sides.train = np.sort(np.concatenate([sides.train, sides.test]))
        sides.fit = np.sort(np.concatenate([sides.fit, sides.test]))
        sides.test = sides.test[:0]
    tr, va, fit = sides.train, sides.valid, sides.fit
    # A random fifth of the train side calibrates the intervals, whatever the split: re-decided
    # without the test files (benchmarks.bench_decisions), its out-of-fold coverage was nearer 90%
    # than the rarest scaffold groups' on 5 of TDC's 9 regression datasets (the rarest groups had
    # been chosen on TDC's test files).
    calibration_rule = CALIBRATION_RULE
    calib = calibration_molecules(curated.mols, tr, seed, rule=calibration_rule)
    # The calibration molecules stay in selection's training data (the whole train side): they
    # never validate (choose) anything. Taking them out of it as well was measured: the same
    # coverage, but boosting without the rarest scaffolds stopped early (AqSolDB: half the
    # rounds, MAE 0.777 against 0.752; BENCHMARKS.md).
    z = transform.forward(y) if task == "regression" else y

    report("featurizing", 0.06)
    full_spec = union_spec([r.spec() for r in candidates])
    assert full_spec is not None
    cache = feature_cache or FeatureCache()
    features = cache.featurize(curated.canonical_smiles, curated.mols, full_spec)
    x_all = features.matrix

    # Each recipe's columns are binned once; the selection split and the folds are subsets.
    position = np.full(n, -1, dtype=np.int64)
    position[fit] = np.arange(len(fit))
    binned: dict[Recipe, tuple[np.ndarray, object]] = {}

    def columns_and_dataset(recipe: Recipe):
        if recipe not in binned:
            keep = recipe.spec().columns_in(full_spec)
            x = x_all if keep is None else x_all[:, keep]
            data = lgb.Dataset(x[fit], z[fit], free_raw_data=False,
                               params={"feature_pre_filter": False, "verbose": -1,
                                       "num_threads": settings.threads})
            binned[recipe] = (x, data.construct())
        return binned[recipe]

    # 1. Selection on the validation split: recipe, then rounds by early stopping.
    search_log = []
    best: dict | None = None
    for index, recipe in enumerate(candidates):
        report(f"selecting {index + 1}/{len(candidates)}", 0.1 + 0.3 * index / len(candidates))
        x, data = columns_and_dataset(recipe)
        params = recipe.lgb_params(task, settings.rate(task), seed, settings.threads, False, rows=len(tr))
        train_set = data.subset(position[tr])
        valid_set = data.subset(position[va])
        booster = lgb.train(params, train_set, num_boost_round=settings.max_rounds,
                            valid_sets=[valid_set],
                            callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)])
        # A validation split of a few dozen molecules can stop boosting after a round or two by
        # chance; a floor keeps such a model from being a constant.
        rounds = max(settings.min_rounds, booster.best_iteration or settings.max_rounds)
        raw = booster.predict(x[va], num_iteration=rounds, raw_score=True)
        value = 1 / (1 + np.exp(-raw)) if task == "classification" else transform.inverse(raw)
        score = _metric_score(metric, task, y[va], value)
        search_log.append({"recipe": recipe.to_dict(), "rounds": rounds, "valid_score": score})
        if best is None or score > best["valid_score"]:
            best = {"recipe": recipe, "rounds": rounds, "valid_score": score, "valid": value}
    assert best is not None
    recipe: Recipe = best["recipe"]
    spec = recipe.spec()
    keep = spec.columns_in(full_spec)
    x, data = columns_and_dataset(recipe)

    # 2. The served ensemble: one member per scaffold fold of the fitted data.
    fold_ids = [f for f in scaffold_folds([curated.mols[i] for i in fit], settings.folds, seed=seed) if f]
    fold_rule = f"scaffold_folds of the fitted molecules, seed {seed}"
    if len(fold_ids) < 2:
        # Too few scaffold groups to fill two folds (a set of acyclic molecules is one group):
        # random folds, so that every member still holds molecules out.
        order = np.random.default_rng(seed).permutation(len(fit))
        fold_ids = [sorted(part.tolist()) for part in np.array_split(order, settings.folds) if len(part)]
        fold_rule = f"random folds of the fitted molecules, seed {seed} (too few scaffold groups)"
    folds = [fit[np.array(f, dtype=np.int64)] for f in fold_ids]
    members = []
    out_of_fold = np.full(n, np.nan)
    oof_similarity = np.full(n, np.nan)
    for k, held_out in enumerate(folds):
        report(f"ensemble member {k + 1}/{len(folds)}", 0.4 + 0.45 * k / len(folds))
        inside = np.setdiff1d(fit, held_out, assume_unique=True)
        params = recipe.lgb_params(task, settings.rate(task), seed + 1 + k, settings.threads, True,
                                   rows=len(inside))
        member = lgb.train(params, data.subset(position[inside]), num_boost_round=best["rounds"])
        members.append(member)
        out_of_fold[held_out] = member.predict(x[held_out], raw_score=True)
        index_k = SimilarityIndex.build([features.on_bits[i] for i in inside], spec.n_bits)
        oof_similarity[held_out], _ = index_k.nearest_many([features.on_bits[i] for i in held_out])

    report("calibrating and evaluating", 0.88)
    ensemble = from_lightgbm(members)
    index = SimilarityIndex.build([features.on_bits[i] for i in fit], spec.n_bits)
    # In domain: at least as similar to training as the least similar 5% of out-of-fold molecules.
    ad_threshold = float(np.quantile(oof_similarity[fit], 0.05))

    # The test set: TDC's rows as given, or the held-out molecules.
    test_keys: list[str] = []
    if test is not None:
        test_keys, test_mols, test_errors = _parse_rows(test.smiles)
        ok = np.array([bool(k) for k in test_keys])
        test_y = np.asarray(test.labels, dtype=np.float64)
        good = [i for i in range(len(test_keys)) if ok[i]]
        test_features = cache.featurize([test_keys[i] for i in good], [test_mols[i] for i in good],
                                        full_spec)
        test_x = test_features.matrix if keep is None else test_features.matrix[:, keep]
        test_bits = test_features.on_bits
    else:
        te = sides.test
        ok = np.ones(len(te), dtype=bool)
        test_y = y[te]
        good = list(range(len(te)))
        test_errors = [""] * len(te)
        test_x = x[te]
        test_bits = [features.on_bits[i] for i in te]
    test_raw = ensemble.raw_scores(test_x) if len(good) else np.zeros((0, len(members)))
    test_similarity, _ = index.nearest_many(test_bits)
    yg = test_y[ok]

    calibration: dict = {}
    metrics: dict = {}
    test_pred = np.full(len(ok), np.nan)
    if task == "regression":
        # Split conformal on the calibration molecules' out-of-fold absolute residuals (model
        # space): half width = q, the same for every molecule (how far from the training set a
        # molecule lies is said by its applicability domain). Scaling the residuals by distance
        # to the training set was measured against it and under-covered LD50 (BENCHMARKS.md).
        def quantiles_from(molecules: np.ndarray, scaled: bool = False) -> tuple[float | None, dict]:
            """Conformal quantiles at each level of the molecules' absolute residuals, or of
            the residuals over (distance + gamma), gamma = median distance + 0.001 (then
            returned with them)."""
            score = np.abs(z[molecules] - out_of_fold[molecules])
            gamma = None
            if scaled:
                distance = 1.0 - oof_similarity[molecules]
                gamma = float(np.median(distance)) + 1e-3
                score = score / (distance + gamma)
            return gamma, {str(c): conformal_quantile(score, c) for c in CONFIDENCE_LEVELS}

        _, quantiles = quantiles_from(calib if len(calib) else fit)
        q = quantiles[str(CONFIDENCE)]
        drawn = ("the train side's rarest Bemis-Murcko scaffold groups, smallest first (equal sizes "
                 f"in a seeded order, seed {seed + 1000}), up to 1/{CALIBRATION_SHARE} of it, as a "
                 "scaffold split draws its test side"
                 if calibration_rule == "rarest_scaffolds" else
                 f"a random 1/{CALIBRATION_SHARE} of the train side (seed {seed + 1000}), as a random "
                 "split draws its test side")
        calibration = {
            "method": "split conformal on out-of-fold absolute residuals of calibration molecules "
                      "that chose nothing (never validation molecules)",
            "scale": "none", "quantile": q, "confidence": CONFIDENCE,
            "quantiles": quantiles, "levels": list(CONFIDENCE_LEVELS),
            "space": "log10" if transform.kind == "log10" else "value",
            "calibration_set": {
                "molecules": int(len(calib)) if len(calib) else int(len(fit)),
                "rule": (drawn + "; never validation molecules, so they choose neither the recipe "
                         "nor the rounds") if len(calib)
                else "every fitted molecule (too few to set some apart)",
                "score": "|y - out-of-fold prediction| (model space), the prediction by the "
                         "ensemble member that did not see the molecule",
                "quantile_rule": "ceil((n + 1) * confidence)-th smallest score",
            },
        }
        mean_z = test_raw.mean(axis=1)
        prediction = transform.inverse(mean_z)
        test_pred[ok] = prediction

        def coverage(gamma: float | None, levels: dict[str, float]) -> dict[str, float]:
            """Test coverage at each level: constant half widths, or scaled by distance."""
            found = {}
            for level, qq in levels.items():
                half = qq if gamma is None else qq * (1.0 - test_similarity + gamma)
                found[level] = M.interval_coverage(yg, transform.inverse(mean_z - half),
                                                   transform.inverse(mean_z + half))
            return found

        oof = M.regression_metrics(y[fit], transform.inverse(out_of_fold[fit]))
        # The 90% interval around each out-of-fold prediction, on the fitted molecules that did
        # not calibrate it: the coverage a production model (no test set) can state.
        others = np.setdiff1d(fit, calib) if len(calib) else fit
        oof["interval_coverage"] = M.interval_coverage(
            y[others], transform.inverse(out_of_fold[others] - q), transform.inverse(out_of_fold[others] + q))
        oof["interval_coverage_molecules"] = int(len(others))
        metrics = {"test": {}, "out_of_fold": oof, "primary": "rmse"}
        previous = variants = parity = None
        if len(yg):
            test_metrics = M.regression_metrics(yg, prediction)
            low, high = transform.inverse(mean_z - q), transform.inverse(mean_z + q)
            test_metrics["interval_coverage"] = M.interval_coverage(yg, low, high)
            test_metrics["interval_mean_width"] = float(np.mean(high - low))
            test_metrics["interval_coverage_by_level"] = coverage(None, quantiles)
            # The first rule (every fitted molecule's out-of-fold residual, selection's
            # included, scaled by distance), on these same members: for comparison.
            previous = coverage(*quantiles_from(fit, scaled=True))
            # Measured alongside: the same calibration molecules with residuals scaled by distance.
            variants = {"distance_scaled": coverage(*quantiles_from(calib if len(calib) else fit,
                                                                    scaled=True))}
            baseline_pred, alpha = ridge_baseline(x[tr], z[tr], x[va], z[va], test_x)
            metrics.update(test=test_metrics, baseline_test={
                "model": f"ridge (alpha={alpha})",
                **M.regression_metrics(yg, transform.inverse(baseline_pred))})
            parity = {"measured": yg.round(4).tolist(), "predicted": np.round(prediction, 4).tolist()}
    else:
        platt = choose_probability_calibration(out_of_fold[calib], y[calib], seed) if len(calib) \
            else {"method": "none", "applied": False, "a": 1.0, "b": 0.0,
                  "reason": "too few molecules to set calibration molecules apart"}
        a, b = (platt["a"], platt["b"]) if platt["applied"] else (1.0, 0.0)
        uncalibrated = (1.0 / (1.0 + np.exp(-test_raw))).mean(axis=1)
        probability = (1.0 / (1.0 + np.exp(-(a * test_raw + b)))).mean(axis=1)
        test_pred[ok] = probability
        calibration = {"method": "ensemble spread (member probabilities)", "confidence": CONFIDENCE,
                       "probability_calibration": platt}
        oof_p = 1.0 / (1.0 + np.exp(-out_of_fold[fit]))
        out_of_fold_metrics = M.classification_metrics(y[fit], oof_p)
        out_of_fold_metrics["reliability"] = M.reliability_curve(y[fit], oof_p)
        metrics = {"test": {}, "out_of_fold": out_of_fold_metrics, "primary": "roc_auc"}
        previous = variants = parity = None
        if len(yg):
            baseline_pred, alpha = ridge_baseline(x[tr], y[tr], x[va], y[va], test_x)
            test_metrics = M.classification_metrics(yg, probability)
            test_metrics["ece_uncalibrated"] = M.expected_calibration_error(yg, uncalibrated)
            test_metrics["reliability"] = M.reliability_curve(yg, probability)
            test_metrics["reliability_uncalibrated"] = M.reliability_curve(yg, uncalibrated)
            metrics.update(test=test_metrics, baseline_test={
                "model": f"ridge on 0/1 labels (alpha={alpha})",
                "roc_auc": M.roc_auc(yg, baseline_pred),
                "pr_auc": M.average_precision(yg, baseline_pred)})
            parity = {"roc": M.roc_curve(yg, probability)}
    # The chosen recipe's selection model (trained on the train side) on the validation side
    # that chose it: what routing compares with a graph model validated on the same molecules.
    metrics["valid"] = (M.regression_metrics(y[va], best["valid"]) if task == "regression"
                        else M.classification_metrics(y[va], best["valid"]))
    if len(ok) and not ok.all():
        metrics["test"]["unreadable_rows"] = int((~ok).sum())
    if metric and len(ok):
        # TDC scores every row of its test file: a row RDKit cannot read gets the training
        # median (regression) or the training positive rate (classification), and is counted.
        fallback = (float(np.median(y[fit])) if task == "regression" else float(np.mean(y[fit])))
        scored = np.where(ok, test_pred, fallback)
        metrics["tdc"] = {"metric": metric, "test": M.tdc_metric(metric, test_y, scored),
                          "rows": int(len(ok)), "unreadable_rows": int((~ok).sum()),
                          "unreadable_rows_predicted_as": "training median" if task == "regression"
                          else "training positive rate"}
        test_pred = scored
    in_domain = test_similarity >= ad_threshold
    if task == "regression" and in_domain.sum() >= 5 and (~in_domain).sum() >= 5:
        metrics["test"]["rmse_in_domain"] = M.regression_metrics(
            yg[in_domain], test_pred[ok][in_domain])["rmse"]
        metrics["test"]["rmse_out_of_domain"] = M.regression_metrics(
            yg[~in_domain], test_pred[ok][~in_domain])["rmse"]
    # Every fitted molecule's out-of-fold prediction (the member that never saw it), with its
    # fold: the evidence other tiers are compared and stacked with (`molserve.models.stacking`).
    fold_of = np.full(n, -1, dtype=np.int64)
    for k, held_out in enumerate(folds):
        fold_of[held_out] = k
    oof_model = out_of_fold if task == "regression" else 1.0 / (1.0 + np.exp(-out_of_fold))
    on_base = None
    if on_fitted is not None:
        # Bases (molserve.models.on_base): the local model's out-of-fold evidence, to score a
        # recalibrated base and a stack of the two beside it. When one of those wins, the served
        # answers, the out-of-fold figures and the calibration are the combination's.
        test_smiles = ([test_keys[i] for i in good] if test is not None
                       else [curated.canonical_smiles[i] for i in sides.test])
        on_base = on_fitted({
            "task": task, "metric": metric or ("roc-auc" if task == "classification" else "rmse"),
            "y": y[fit], "target": z[fit], "folds": fold_of[fit], "local": out_of_fold[fit],
            "to_label": transform.inverse, "fitted_smiles": [curated.canonical_smiles[i] for i in fit],
            "calibration": calibration, "test_smiles": test_smiles if len(yg) else [],
            "test_local": test_raw.mean(axis=1) if len(yg) else np.zeros(0), "test_y": yg})
        if on_base is not None and on_base["raw"] is not None:
            chosen = on_base["section"]["chosen"]
            calibration = on_base["uncertainty"]
            metrics["out_of_fold"] = on_base["section"]["out_of_fold"][chosen]
            oof_model = oof_model.copy()
            oof_model[fit] = (on_base["raw"] if task == "regression"
                              else 1.0 / (1.0 + np.exp(-on_base["raw"])))
            if "test_served" in on_base["section"]:  # the held-out figures of what answers
                unreadable = {k: v for k, v in metrics["test"].items() if k == "unreadable_rows"}
                metrics["test"] = {**on_base["section"].pop("test_served"), **unreadable}
        if on_base is not None:
            metrics["on_base"] = {k: on_base["section"][k] for k in ("chosen", "metric", "scores")}
    result = {"test_predictions": test_pred, "test_errors": test_errors, "metrics": metrics,
              "coverage_previous_rule": previous, "coverage_variants": variants,
              "platt_applied": bool(calibration.get("probability_calibration", {}).get("applied")),
              "recipe": recipe, "rounds": best["rounds"], "spec": spec, "ensemble": ensemble,
              # The chosen recipe's selection model on the validation side (curated order).
              "valid_index": va, "valid_predictions": best["valid"],
              "fit_index": fit, "fitted_smiles": [curated.canonical_smiles[i] for i in fit],
              # Out of fold (fitted molecules, in `fitted_smiles` order): each one's fold and the
              # prediction of the member that never saw it (model scale; probabilities).
              "fitted_labels": y[fit], "fitted_folds": fold_of[fit],
              "fitted_out_of_fold": oof_model[fit],
              "test_keys": test_keys if test is not None else None,
              "on_base": on_base["section"] if on_base is not None else None,
              "seconds": time.perf_counter() - started}
    if registry is None:
        return None, result

    report("exporting", 0.96)
    from safetensors.numpy import save

    trees_bytes = save(ensemble.arrays(), metadata={"endpoint": endpoint, "format": "trees-1"})
    ad_bytes = save(index.arrays(), metadata={"n_bits": str(spec.n_bits)})
    lightgbm_text = "".join(f"# member {i}\n{m.model_to_string()}\n" for i, m in enumerate(members))
    table = io.StringIO()
    table.write("canonical_smiles,label,split\n")
    side = np.full(n, "train", dtype=object)
    side[sides.valid] = "valid"
    side[sides.test] = "test"
    for i in range(n):
        table.write(f"{curated.canonical_smiles[i]},{y[i]:.6g},{side[i]}\n")
    if test is not None:  # the fixed test set's readable rows, as scored (other tiers use them)
        for i in good:
            table.write(f"{test_keys[i]},{test_y[i]:.6g},test\n")
    train_smiles = "\n".join(curated.canonical_smiles[i] for i in fit) + "\n"
    oof_table = io.StringIO()
    oof_table.write("canonical_smiles,fold,prediction\n")
    for i in fit:
        oof_table.write(f"{curated.canonical_smiles[i]},{fold_of[i]},{oof_model[i]:.8g}\n")
    split_sizes = {"train": len(tr), "calibration (part of train, never validation)": len(calib),
                   "valid": len(va),
                   "test": len(sides.test) if test is None else len(test)}
    manifest = {
        "kind": "gbm",
        "tier": "fast",
        "model_id": f"{endpoint}/gbm",
        "task": task,
        "units": dataset.units,
        "description": dataset.description,
        "label_names": list(dataset.label_names) if dataset.label_names else None,
        "dataset": dataset.describe(),
        "curation": curated.report,
        "split": {"method": sides.method, "seed": seed, "sizes": split_sizes,
                  "test": "fixed test set, every row scored" if test is not None
                  else "held-out part of the dataset" if hold_out
                  else "none: a production model fits every labelled row",
                  **({"test_source": test.source, "test_sha256": test.checksum} if test else {})},
        # Which rows the model learned from, and where its quality figures come from.
        "trained_on": {
            "rows": "every labelled row (production model)" if not hold_out
            else "every row but the test set",
            "molecules": int(len(fit)),
            "figures": "out of fold over scaffold folds of the fitted molecules (metrics.out_of_fold)"
            if not hold_out else "the held-out test set (metrics.test), and out of fold"},
        "features": spec.to_dict(),
        "target_transform": transform.to_dict(),
        "model": {
            "library": f"lightgbm {lgb.__version__}; served from flat tree arrays with numpy",
            "trees": ensemble.n_trees,
            "depth": ensemble.depth,
            "ensemble_size": len(members),
            "ensemble": f"{len(members)} members, each trained on all but one scaffold fold of "
                        f"the {len(fit)} training molecules",
            "rounds": best["rounds"],
            "recipe": recipe.to_dict(),
            "learning_rate": settings.rate(task),
            "profile": profile,
            "search": search_log,
            "output": ("raw margin per member; sigmoid applied at serving"
                       if task == "classification" else
                       "value per member" + (" in log10 space" if transform.kind == "log10" else "")),
        },
        "uncertainty": {**calibration,
                        **(({"test_coverage": metrics["test"]["interval_coverage_by_level"]}
                            if task == "regression" else
                            {"test_ece": metrics["test"]["ece"],
                             "test_ece_uncalibrated": metrics["test"]["ece_uncalibrated"]})
                           if metrics["test"] else {})},
        "applicability_domain": {
            "method": "max Tanimoto similarity (Morgan radius 2, 2048 bits) to the training molecules",
            "threshold": ad_threshold,
            "threshold_rule": "5th percentile of out-of-fold molecules' max similarity to their "
                              "member's training molecules",
            "computed_on": {
                "molecules": int(len(fit)),
                "which": "every fitted molecule, each against the training molecules of the "
                         "ensemble member that did not see it (scaffold folds)",
                "similarity_quantiles": {str(q): round(float(np.quantile(oof_similarity[fit], q)), 4)
                                         for q in (0.05, 0.25, 0.5, 0.75)},
            },
            "index": f"the {len(fit)} fitted molecules (train_smiles.txt)",
            "test": {"molecules": int(len(in_domain)),
                     "in_domain_fraction": round(float(in_domain.mean()), 4) if len(in_domain) else None,
                     "median_similarity": round(float(np.median(test_similarity)), 4)
                     if len(test_similarity) else None},
        },
        "metrics": metrics,
        "test_predictions": parity,
        "out_of_fold": {
            "file": "out_of_fold.csv",
            "folds": len(folds),
            "fold_rule": fold_rule,
            "prediction": ("the ensemble member that never saw the molecule, on the model's scale"
                           + (" (log10)" if transform.kind == "log10" else "")
                           if task == "regression" else
                           "the class-1 probability of the member that never saw the molecule")},
        # What a graph model trained on this split averages with its own validation answers to
        # score the tiers' mean on the validation side.
        "valid_predictions": {
            "model": "the chosen recipe's selection model (train side), before calibration",
            "rows": "the validation rows of data.csv, in order",
            "predicted": [round(float(v), 6) for v in np.asarray(best["valid"])[np.argsort(va)]]},
        "training_seconds": round(time.perf_counter() - started, 2),
        **({"on_base": on_base["section"]} if on_base is not None else {}),
        **(extra_manifest or {}),
    }
    artifact = registry.write(
        endpoint,
        {
            "trees.safetensors": trees_bytes,
            "ad_index.safetensors": ad_bytes,
            "lightgbm_members.txt": lightgbm_text.encode(),
            "data.csv": table.getvalue().encode(),
            "train_smiles.txt": train_smiles.encode(),
            "out_of_fold.csv": oof_table.getvalue().encode(),
        },
        manifest,
    )
    report("done", 1.0)
    return artifact, result


def summarize(artifact: Artifact) -> str:
    m = artifact.manifest["metrics"]
    test = m["test"]
    if not test:  # a production model: nothing held out, its figures are out of fold
        oof = m["out_of_fold"]
        if artifact.manifest["task"] == "classification":
            line = f"ROC AUC {oof['roc_auc']:.3f}, PR AUC {oof['pr_auc']:.3f}"
        else:
            line = (f"RMSE {oof['rmse']:.3f}, MAE {oof['mae']:.3f}, Spearman {oof['spearman']:.3f}, "
                    f"90% interval coverage {oof.get('interval_coverage', float('nan')):.2f}")
        return (f"{artifact.endpoint} v{artifact.version} (every labelled row; out of fold, "
                f"n={oof['n']}): {line}")
    if artifact.manifest["task"] == "classification":
        line = f"ROC AUC {test['roc_auc']:.3f}, PR AUC {test['pr_auc']:.3f}, accuracy {test['accuracy']:.3f}"
        base = f"baseline ROC AUC {m['baseline_test']['roc_auc']:.3f}"
    else:
        line = (f"RMSE {test['rmse']:.3f}, MAE {test['mae']:.3f}, R2 {test['r2']:.3f}, "
                f"90% interval coverage {test['interval_coverage']:.2f}")
        base = f"baseline RMSE {m['baseline_test']['rmse']:.3f}"
    tdc = m.get("tdc")
    extra = f"; TDC {tdc['metric']} {tdc['test']:.3f}" if tdc else ""
    return f"{artifact.endpoint} v{artifact.version} (test, n={test['n']}): {line}; {base}{extra}"
