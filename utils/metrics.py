"""The GLUE metrics of each task, from scikit-learn and scipy (no `evaluate.load`, which needs the hub).

"accuracy", "f1" (binary, positive class 1), "mcc" (Matthews correlation), "pearson", "spearman";
which ones a task reports is its `GlueTask.metrics` (`utils.glue`). Degenerate inputs give 0.0
without warnings: F1 with no positive prediction or label, MCC with a single predicted class
(sklearn's convention), and a correlation where predictions or labels are constant (scipy would
warn and return nan).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from utils.glue import GlueTask, get_task


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(f1_score(gold, pred, average="binary", pos_label=1, zero_division=0))


def mcc(pred: np.ndarray, gold: np.ndarray) -> float:
    if len(np.union1d(pred, gold)) < 2:
        return 0.0  # one class everywhere: sklearn returns 0.0 too, but warns
    return float(matthews_corrcoef(gold, pred))


def _correlation(fn, pred: np.ndarray, gold: np.ndarray) -> float:
    if np.all(pred == pred[0]) or np.all(gold == gold[0]):
        return 0.0  # undefined; 0.0 = "no linear/rank relation", keeps model selection numeric
    return float(fn(pred, gold)[0])


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    return _correlation(pearsonr, pred, gold)


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    return _correlation(spearmanr, pred, gold)


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: str | GlueTask, predictions, labels) -> dict[str, float]:
    """The task's GLUE metrics, e.g. {"accuracy": .., "f1": ..} for MRPC.

    Classification: `predictions` are class ids (argmax the logits first). STS-B: floats.
    MNLI: call once per dev set (matched, mismatched).
    """
    task = get_task(task)
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if task.is_regression:  # accept an (n, 1) regression head output
        pred, gold = pred.reshape(-1).astype(float), gold.reshape(-1).astype(float)
    elif pred.ndim != 1 or not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"classification predictions must be a 1-D array of class ids "
                         f"(argmax the logits first); got shape {pred.shape}, dtype {pred.dtype}")
    if pred.shape != gold.shape or pred.size == 0:
        raise ValueError(f"need equally many predictions and labels, at least one; "
                         f"got {pred.shape} and {gold.shape}")
    return {name: METRICS[name](pred, gold) for name in task.metrics}
