"""Per-example losses and the dev-set evaluation of a run (whole dev set, once, across processes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.glue import GlueTask
from utils.metrics import compute_metrics


def example_losses(logits: torch.Tensor, labels: torch.Tensor, task: GlueTask) -> torch.Tensor:
    """Per-example loss in float32: cross-entropy, or squared error for regression (STS-B).

    The means of these are what HF's models compute with `labels=` (CrossEntropyLoss / MSELoss).
    """
    logits = logits.float()
    if task.is_regression:
        return (logits.squeeze(-1) - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


def predictions(logits: torch.Tensor, task: GlueTask) -> torch.Tensor:
    """Class ids (argmax), or the regression output."""
    return logits.float().squeeze(-1) if task.is_regression else logits.argmax(-1)


@torch.no_grad()
def evaluate(model, loaders: dict, task: GlueTask, accelerator, orders: dict | None = None
             ) -> tuple[dict, float, dict]:
    """Evaluate on every dev split; returns (metrics, dev_loss, {split: (predictions, labels)}).

    `loaders` are prepared by the accelerator: each process sees a shard, and
    `gather_for_metrics` reassembles the whole split (the padding rows that even out the
    last batches across processes are dropped), so every row counts exactly once.
    Metric names follow utils.logs: the first split's are plain (`accuracy`); further
    splits (MNLI mismatched) are prefixed (`dev_mismatched/accuracy`, `dev_mismatched/loss`).
    dev_loss is the mean per-example loss of the first split, with no regularizer.
    `orders` ({split: row of each position}, see utils.data.eval_order): the loaders' row order,
    undone so that predictions come back in file order.
    """
    was_training = model.training
    model.eval()
    metrics, preds, dev_loss = {}, {}, None
    for i, (split, loader) in enumerate(loaders.items()):
        all_pred, all_label, all_loss = [], [], []
        for batch in loader:
            labels = batch.pop("labels")
            logits = model(**batch).logits
            losses = example_losses(logits, labels, task)
            pred, labels, losses = accelerator.gather_for_metrics((predictions(logits, task), labels, losses))
            all_pred.append(pred.cpu())
            all_label.append(labels.cpu())
            all_loss.append(losses.cpu())
        pred, label = torch.cat(all_pred).numpy(), torch.cat(all_label).numpy()
        if orders and split in orders:  # position k holds row orders[split][k]
            pred[orders[split]], label[orders[split]] = pred.copy(), label.copy()
        loss = torch.cat(all_loss).double().mean().item()
        prefix = "" if i == 0 else f"{split}/"
        metrics.update({prefix + k: v for k, v in compute_metrics(task, pred, label).items()})
        if i == 0:
            dev_loss = loss
        else:
            metrics[prefix + "loss"] = loss
        preds[split] = (pred, label)
    model.train(was_training)
    return metrics, dev_loss, preds
