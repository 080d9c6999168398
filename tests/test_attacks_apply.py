"""Attack entry points: config, dispatch by kind, provenance files (docs/methods/attacks.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from medmark.attacks import AttackConfig, apply_data_attack, apply_model_attack
from medmark.models import Classifier, build_classifier
from medmark.train import TrainConfig

torch.set_num_threads(1)
CPU = torch.device("cpu")


def tiny_dataset(n: int = 32, size: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.1 * torch.rand(n, 1, size, size, generator=g)
    y = torch.arange(n) % 2
    x[y == 1, :, 8:20, 8:20] = 0.95
    return TensorDataset(x, y)


def tiny_cfg(**kw: object) -> AttackConfig:
    base: dict[str, object] = {
        "train": {"epochs": 1, "batch_size": 16, "augment": False},
        "finetune_lr": 1e-3,
        "prune_data_frac": 0.5,
        "prune_epochs": 1,
        "distill_epochs": 1,
    }
    base.update(kw)
    return AttackConfig.from_dict(base)


def test_config_from_dict() -> None:
    cfg = tiny_cfg(student_arch="densenet121", seed=3)
    assert cfg.train == TrainConfig(epochs=1, batch_size=16, augment=False)
    assert cfg.student_arch == "densenet121" and cfg.seed == 3
    with pytest.raises(ValueError, match="unknown keys"):
        AttackConfig.from_dict({"finetune_epoch": 2})
    with pytest.raises(ValueError, match="student_arch"):
        AttackConfig.from_dict({"student_arch": "vgg"})


def test_none_and_wrong_kind(tmp_path: Path) -> None:
    model = build_classifier("resnet18", seed=0)
    ds = tiny_dataset()
    assert apply_model_attack("none", model, ds, tiny_cfg(), CPU, tmp_path) is model
    with pytest.raises(ValueError, match="'query' attack"):
        apply_model_attack("jpeg_q50", model, ds, tiny_cfg(), CPU, tmp_path)
    with pytest.raises(ValueError, match="'model' attack"):
        apply_data_attack("prune_0.1", model, ds, np.zeros(32), tiny_cfg(), CPU, tmp_path)


def test_finetune_wildcard(tmp_path: Path) -> None:
    model = build_classifier("resnet18", seed=0)
    out = apply_model_attack(
        "finetune_frac0.5_ep1", model, tiny_dataset(), tiny_cfg(), CPU, tmp_path
    )
    assert isinstance(out, Classifier) and out is not model
    assert not torch.equal(out.net.fc.weight, model.net.fc.weight)
    history = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    assert len(history) == 1  # the wildcard's _ep1 overrides the configured default


def test_prune_wildcard_writes_provenance(tmp_path: Path) -> None:
    model = build_classifier("resnet18", seed=0)
    out = apply_model_attack("prune_0.5", model, tiny_dataset(), tiny_cfg(), CPU, tmp_path)
    info = json.loads((tmp_path / "pruning.json").read_text())
    assert info["channels"] == 512 and len(info["pruned"]) == 256
    assert not any(k.endswith("_mask") for k in out.state_dict())
    w = out.net.layer4[1].bn2.weight.detach()
    assert torch.all(w[info["pruned"]] == 0)


def test_distill_wildcard(tmp_path: Path) -> None:
    model = build_classifier("resnet18", seed=0)
    out = apply_model_attack("distill_T4", model, tiny_dataset(), tiny_cfg(seed=5), CPU, tmp_path)
    assert isinstance(out, Classifier) and out.arch == "resnet18"
    assert (tmp_path / "last.pt").exists()


def test_data_attack_filters_and_retrains(tmp_path: Path) -> None:
    ds = tiny_dataset()
    labels = ds.tensors[1].numpy()
    suspect = build_classifier("resnet18", seed=0)
    model, kept = apply_data_attack(
        "filter_spectral0.2", suspect, ds, labels, tiny_cfg(), CPU, tmp_path
    )
    n_removed_per_class = math.floor(1.5 * 0.2 * 16)
    assert kept.size == 32 - 2 * n_removed_per_class
    info = json.loads((tmp_path / "filter.json").read_text())
    assert info["n_kept"] == kept.size
    assert info["removed_per_class"] == {"0": n_removed_per_class, "1": n_removed_per_class}
    assert sorted(info["removed"] + kept.tolist()) == list(range(32))
    assert isinstance(model, Classifier) and model is not suspect
    assert (tmp_path / "last.pt").exists()
