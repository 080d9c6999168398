"""Benign accuracy and AUROC of a classifier on a labelled split (torchmetrics)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from medmark.train import resize_batch


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 128,
    input_resolution: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, K)`` and labels ``(N,)`` over a ``(x, y)`` dataset."""
    model.eval().to(device)
    probs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = resize_batch(x.to(device, torch.float32), input_resolution)
        probs.append(torch.softmax(model(x), 1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy (argmax) and AUROC of class 1; AUROC is NaN when only one class is present."""
    p1 = torch.as_tensor(probs[:, 1], dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    acc = float(binary_accuracy(p1, y, threshold=0.5))
    auroc = float(binary_auroc(p1, y)) if len(set(labels.tolist())) == 2 else math.nan
    return {"accuracy": acc, "auroc": auroc, "n": int(len(labels)), "positives": int(y.sum())}
