"""Evaluation of networks on a dataset split.

This module holds the single-model evaluator used by training and by every
command that reports a model's loss and error. (The batched engine, anchors x
coefficients with K points per data pass, joins it here.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["evaluate_model", "l2_penalty"]


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    data,
    split: str = "test",
    *,
    batch_size: int = 1000,
    amp: bool = False,
) -> dict[str, float]:
    """Mean NLL and error (percent) of ``model`` on one split of ``data``.

    Runs in eval mode (batch norm uses its running statistics) without
    augmentation, and restores the model's train/eval mode afterwards.
    Returns ``{"nll", "error", "n"}``; sums are kept on the device so there is
    one host synchronisation per call.
    """
    was_training = model.training
    model.eval()
    device = data.device
    nll = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        for x, y in data.batches(split, batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)  # (B, classes)
            logits = logits.float()
            nll += F.cross_entropy(logits, y, reduction="sum").double()
            wrong += (logits.argmax(dim=1) != y).sum()
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        return {"nll": float("nan"), "error": float("nan"), "n": 0}
    return {"nll": nll.item() / n, "error": 100.0 * wrong.item() / n, "n": n}


def l2_penalty(model: nn.Module, wd: float) -> float:
    """``0.5 * wd * sum ||p||^2`` over trainable parameters: the weight-decay
    term the papers add to the training NLL when they report "train loss"."""
    with torch.no_grad():
        total = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters() if p.requires_grad)
    return 0.5 * wd * total
