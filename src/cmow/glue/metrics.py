"""GLUE metrics and the GLUE score, computed with scikit-learn and scipy.

Every task's metrics include ``score``, its main score: the metric itself for one-metric tasks and the mean of the
two for MRPC and QQP (accuracy, F1) and STS-B (Pearson, Spearman), as on the GLUE leaderboard. The GLUE score is the
mean of the tasks' main scores. Scores are fractions in [0, 1] (correlations in [-1, 1]).
"""

from collections.abc import Mapping

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import EvalPrediction

from .data import TASKS, GlueTask, get_task


def task_metrics(task: GlueTask | str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score a task's predictions.

    Args:
        task: The task or its name.
        predictions: Logits ``(n, num_labels)`` (argmax is taken) or, for STS-B, scores ``(n,)`` or ``(n, 1)``.
        labels: Gold class ids or scores, ``(n,)``.

    Returns:
        The task's metrics (``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearman``) and ``score``.
    """
    task = get_task(task) if isinstance(task, str) else task
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task.is_regression:
        scores = predictions.reshape(len(labels)).astype(np.float64)
        metrics = {"pearson": float(pearsonr(scores, labels)[0]), "spearman": float(spearmanr(scores, labels)[0])}
    else:
        classes = predictions.argmax(axis=-1) if predictions.ndim == 2 else predictions
        if task.name == "CoLA":
            metrics = {"matthews_correlation": float(matthews_corrcoef(labels, classes))}
        else:
            metrics = {"accuracy": float(accuracy_score(labels, classes))}
            if task.name in ("MRPC", "QQP"):
                metrics["f1"] = float(f1_score(labels, classes))
    metrics["score"] = float(np.mean(list(metrics.values())))
    return metrics


def majority_baseline(task: GlueTask | str, train_labels: np.ndarray, dev_labels: np.ndarray) -> dict[str, float]:
    """Scores of always answering the train set's most frequent class (the smallest id on a tie), on dev.

    For STS-B the constant is the mean train score; a constant has no correlation with anything, so its Pearson and
    Spearman count as 0 (scipy would return NaN).
    """
    task = get_task(task) if isinstance(task, str) else task
    dev_labels = np.asarray(dev_labels)
    if task.is_regression:
        return {"pearson": 0.0, "spearman": 0.0, "score": 0.0}
    majority = int(np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=task.num_labels).argmax())
    return task_metrics(task, np.full(len(dev_labels), majority), dev_labels)


def compute_metrics_fn(task: GlueTask | str):
    """A ``compute_metrics`` for the ``Trainer``: ``EvalPrediction -> task_metrics(...)``."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        return task_metrics(task, prediction.predictions, prediction.label_ids)

    return compute_metrics


def glue_score(main_scores: Mapping[str, float]) -> float:
    """The GLUE score: the mean of the tasks' main scores (``task_metrics(...)["score"]``), keyed by task name.

    Raises:
        ValueError: if a key is not a GLUE task or the mapping is empty.
    """
    if not main_scores:
        raise ValueError("No task scores to average: run at least one GLUE task first.")
    unknown = set(main_scores) - set(TASKS)
    if unknown:
        raise ValueError(f"Not GLUE task names: {sorted(unknown)}; use {', '.join(TASKS)}.")
    return float(np.mean(list(main_scores.values())))
