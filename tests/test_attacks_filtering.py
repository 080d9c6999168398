"""Spectral-signature filtering removes injected outliers (Tran et al., NeurIPS 2018; docs/methods/attacks.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from medmark.attacks.filtering import (
    extract_features,
    filter_dataset,
    spectral_keep_indices,
    spectral_signature_scores,
)
from medmark.models import build_classifier

torch.set_num_threads(1)


def poisoned_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two Gaussian classes in 20-D; 20 class-1 items form a shifted, separable cluster."""
    rng = np.random.default_rng(seed)
    clean0 = rng.normal(size=(200, 20))
    clean1 = rng.normal(size=(200, 20)) + 1.0
    shift = np.zeros(20)
    shift[:4] = 4.0  # |shift| = 8 standard deviations
    poison = rng.normal(size=(20, 20)) + 1.0 + shift
    feats = np.concatenate([clean0, clean1, poison])
    labels = np.array([0] * 200 + [1] * 220)
    is_poison = np.zeros(420, dtype=bool)
    is_poison[400:] = True
    return feats, labels, is_poison


def test_scores_flag_the_injected_cluster() -> None:
    feats, labels, is_poison = poisoned_features()
    scores = spectral_signature_scores(feats, labels)
    assert scores.shape == (420,)
    assert scores[is_poison].min() > np.median(scores[labels == 1])
    kept = spectral_keep_indices(scores, labels, eps=0.1)
    removed = np.setdiff1d(np.arange(420), kept)
    assert is_poison[removed].sum() >= 18  # most (here: at least 90 %) of the 20 outliers
    # exactly floor(1.5 * eps * n_c) removed per class
    assert (labels[removed] == 0).sum() == math.floor(1.5 * 0.1 * 200)
    assert (labels[removed] == 1).sum() == math.floor(1.5 * 0.1 * 220)
    assert np.all(np.diff(kept) > 0)


def test_scores_are_the_squared_projection_per_class() -> None:
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(30, 5)) * np.array([5.0, 1, 1, 1, 1])
    labels = np.zeros(30, dtype=int)
    scores = spectral_signature_scores(feats, labels)
    centred = feats - feats.mean(0)
    v = np.linalg.svd(centred)[2][0]
    np.testing.assert_allclose(scores, (centred @ v) ** 2)


def test_filter_dataset_with_feature_function() -> None:
    feats, labels, is_poison = poisoned_features(1)
    ds = TensorDataset(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels))
    kept = filter_dataset(lambda x: x, ds, labels, 0.1, device=torch.device("cpu"))
    assert kept.size == 420 - 30 - 33
    assert is_poison[kept].sum() <= 2


def test_filter_dataset_validates_inputs() -> None:
    ds = TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        filter_dataset(lambda x: x, ds, np.zeros(3), 0.1, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="eps"):
        spectral_keep_indices(np.zeros(4), np.zeros(4), 0.7)


def test_extract_features_is_the_penultimate_layer() -> None:
    model = build_classifier("resnet18", seed=0).eval()
    x = torch.rand(6, 1, 32, 32)
    ds = TensorDataset(x, torch.zeros(6, dtype=torch.long))
    feats = extract_features(model, ds, device=torch.device("cpu"), batch_size=4)
    assert feats.shape == (6, 512)
    captured = {}
    handle = model.net.avgpool.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("f", out.flatten(1))
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    np.testing.assert_allclose(feats, captured["f"].double().numpy(), rtol=1e-5, atol=1e-6)
