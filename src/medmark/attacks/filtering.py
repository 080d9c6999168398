"""Dataset-filtering attack: spectral signatures (Tran, Li & Madry, NeurIPS 2018; docs/methods/attacks.md).

Before training a suspect, its owner removes training images whose learned representations look
anomalous. Tran et al.'s recipe, implemented here: train a network on the (possibly poisoned)
data, take each image's penultimate-layer representation, and, separately for every label,
centre the representations, find the top right singular vector ``v`` of the centred matrix and
score each image by its squared projection ``((r - mean) · v)²``. With an assumed upper bound
``eps`` on the poisoned fraction, the ``floor(1.5·eps·n_c)`` highest-scoring images of each
class ``c`` are removed and a new model is trained from scratch on the rest.

Which model supplies the features: one trained on the very data being filtered. In the pipeline
that is the suspect itself (e.g. the Malicious suspect, trained on the protected release),
which is what :func:`medmark.attacks.apply.apply_data_attack` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medmark.models import Classifier
from medmark.train import resize_batch


def spectral_signature_scores(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class outlier scores ``((r_i − μ_c)·v_c)²`` of ``features (N, D)`` (float64, ``(N,)``)."""
    feats = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {feats.shape} and {labels.shape}"
        )
    scores = np.zeros(feats.shape[0], dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        centred = feats[idx] - feats[idx].mean(axis=0, keepdims=True)
        if len(idx) < 2:
            continue  # a single point has no spread: score 0
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        scores[idx] = (centred @ vt[0]) ** 2
    return scores


def spectral_keep_indices(scores: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    """Indices kept after removing the ``floor(1.5·eps·n_c)`` top-scoring items of each class."""
    if not 0 < 1.5 * eps < 1:
        raise ValueError(f"eps must be in (0, 2/3), got {eps}")
    labels = np.asarray(labels)
    removed: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_remove = math.floor(1.5 * eps * len(idx))
        if n_remove:
            # stable sort on -score: among equal scores the lower index is removed first
            order = np.argsort(-scores[idx], kind="stable")
            removed.append(idx[order[:n_remove]])
    drop = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
    keep = np.ones(labels.shape[0], dtype=bool)
    keep[drop] = False
    return np.flatnonzero(keep)


def _classifier_head(model: Classifier) -> nn.Module:
    return model.net.fc if model.arch == "resnet18" else model.net.classifier


@torch.no_grad()
def extract_features(
    model_or_feature_fn: Classifier | Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 128,
    input_resolution: int | None = None,
) -> np.ndarray:
    """Representations ``(N, D)`` of the items of ``dataset`` (in order).

    For a :class:`Classifier`: the penultimate layer (the pooled vector fed to the linear head).
    Any other callable (including a non-``Classifier`` module) is applied to the batch and its
    output, flattened per item, is the representation.
    """
    captured: list[torch.Tensor] = []
    handle = None
    if isinstance(model_or_feature_fn, Classifier):
        model = model_or_feature_fn.eval().to(device)
        handle = _classifier_head(model).register_forward_pre_hook(
            lambda _m, args: captured.append(args[0].detach().flatten(1).cpu())
        )
        fn: Callable[[torch.Tensor], torch.Tensor] = model
    else:
        if isinstance(model_or_feature_fn, nn.Module):
            model_or_feature_fn.eval().to(device)
        fn = model_or_feature_fn
    try:
        for x, _y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = x.to(device, torch.float32)
            if x.ndim == 4:
                x = resize_batch(x, input_resolution)
            out = fn(x)
            if handle is None:
                captured.append(out.detach().flatten(1).cpu())
    finally:
        if handle is not None:
            handle.remove()
    if not captured:
        raise ValueError("extract_features needs a non-empty dataset")
    return torch.cat(captured).double().numpy()


def filter_dataset(
    model_or_feature_fn: Classifier | Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    labels: np.ndarray,
    eps: float,
    *,
    device: torch.device,
    batch_size: int = 128,
    input_resolution: int | None = None,
) -> np.ndarray:
    """Spectral-signature filtering of ``dataset``: the sorted indices of the items kept.

    ``labels`` are the training labels of the items (the grouping of Tran et al.);
    ``model_or_feature_fn`` should be a model trained on this very dataset (see module doc).
    """
    labels = np.asarray(labels)
    if labels.shape != (len(dataset),):  # type: ignore[arg-type]
        raise ValueError(f"labels has shape {labels.shape}, dataset has {len(dataset)} items")  # type: ignore[arg-type]
    feats = extract_features(
        model_or_feature_fn,
        dataset,
        device=device,
        batch_size=batch_size,
        input_resolution=input_resolution,
    )
    return spectral_keep_indices(spectral_signature_scores(feats, labels), labels, eps)
