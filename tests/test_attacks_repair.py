"""Model-repair attacks change the model as claimed, on a tiny learnable problem (docs/methods/attacks.md)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from medmark.attacks.repair import (
    channel_activity,
    clean_subset,
    distill,
    feature_channels,
    fine_prune,
    finetune,
    make_pruning_permanent,
    prune_channels,
)
from medmark.models import Classifier, build_classifier, load_classifier, save_classifier
from medmark.train import TrainConfig, predict_proba, train_classifier

torch.set_num_threads(1)
CPU = torch.device("cpu")
#: the repair attacks' recipe on the toy problem (no augmentation: keeps the test deterministic)
TOY_CFG = TrainConfig(epochs=3, batch_size=16, lr=1e-3, augment=False)


def square_dataset(n: int, seed: int, size: int = 32) -> TensorDataset:
    """Bright 10×10 square (label 1) or none (label 0) on a dim noisy background."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.1 * torch.rand(n, 1, size, size, generator=g)
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i]:
            r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
            x[i, 0, r : r + 10, c : c + 10] = 0.95
    return TensorDataset(x, y)


def accuracy(model: torch.nn.Module, ds: TensorDataset) -> float:
    x, y = ds.tensors
    return float((predict_proba(model, x, device=CPU).argmax(1) == y.numpy()).mean())


@pytest.fixture(scope="module")
def toy(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Classifier, TensorDataset, TensorDataset]:
    """A resnet18 that has learnt the square task, its training set and a held-out set."""
    train, test = square_dataset(96, 0), square_dataset(64, 1)
    model = build_classifier("resnet18", seed=0)
    last = tmp_path_factory.mktemp("toy") / "last.pt"
    train_classifier(model, train, TOY_CFG, seed=0, device=CPU, last_path=last)
    assert accuracy(model, test) >= 0.9  # the toy problem is learnt before it is attacked
    return model, train, test


def zero_channels(model: Classifier, x: torch.Tensor, train_mode: bool = False) -> set[int]:
    """Channels of the feature-layer output that are exactly 0 for every input and position."""
    out: dict[str, torch.Tensor] = {}
    handle = model.feature_layer().register_forward_hook(lambda _m, _i, o: out.setdefault("a", o))
    model.train(train_mode)
    with torch.no_grad():
        model(x)
    handle.remove()
    model.eval()
    return set(torch.nonzero((out["a"] == 0).all(dim=(0, 2, 3))).flatten().tolist())


def test_clean_subset_is_seeded_and_sized() -> None:
    ds = square_dataset(40, 0)
    a, b = clean_subset(ds, 0.25, seed=3), clean_subset(ds, 0.25, seed=3)
    assert len(a) == 10 and list(a.indices) == list(b.indices)
    assert list(clean_subset(ds, 0.25, seed=4).indices) != list(a.indices)
    with pytest.raises(ValueError, match="at least 2"):
        clean_subset(ds, 0.01, seed=0)


def test_finetune_changes_weights_and_keeps_accuracy(
    toy: tuple[Classifier, TensorDataset, TensorDataset], tmp_path: Path
) -> None:
    model, train, test = toy
    before = copy.deepcopy(model.state_dict())
    base_acc = accuracy(model, test)
    tuned = finetune(model, train, 0.5, 2, 1e-4, 0, CPU, tmp_path / "last.pt", train_cfg=TOY_CFG)
    assert tuned is not model
    # the suspect itself is untouched, the copy moved
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    w0, w1 = model.net.fc.weight.detach(), tuned.net.fc.weight.detach()
    assert not torch.equal(w0, w1)
    assert float((w0 - w1).abs().max()) > 1e-6
    assert accuracy(tuned, test) >= base_acc - 0.1  # configured BA bound on the toy problem


@pytest.mark.parametrize(("arch", "frac"), [("resnet18", 0.25), ("densenet121", 0.3)])
def test_prune_zeroes_the_stated_fraction_and_survives_save_load(
    arch: str, frac: float, tmp_path: Path
) -> None:
    model = build_classifier(arch, seed=0).eval()
    probe = torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    dead_before = zero_channels(model, probe)
    data = TensorDataset(probe, torch.zeros(8, dtype=torch.long))
    activity = channel_activity(model, data, CPU)
    n_channels = feature_channels(model)
    assert activity.shape == (n_channels,)
    keep = prune_channels(model, frac, activity)
    pruned = set(torch.nonzero(~keep).flatten().tolist())
    assert len(pruned) == round(frac * n_channels)
    # the least active ones were chosen
    assert float(activity[~keep].max()) <= float(activity[keep].min())
    for train_mode in (False, True):
        assert zero_channels(model, probe, train_mode) == pruned | dead_before
    make_pruning_permanent(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    save_classifier(model, tmp_path / "model.pt")
    loaded = load_classifier(tmp_path / "model.pt")
    assert zero_channels(loaded, probe) == pruned | dead_before
    assert pruned <= zero_channels(loaded, torch.rand(4, 1, 48, 48))


def test_fine_prune_keeps_mask_through_finetuning(
    toy: tuple[Classifier, TensorDataset, TensorDataset], tmp_path: Path
) -> None:
    model, train, test = toy
    pruned, keep, _activity = fine_prune(
        model,
        train,
        0.2,
        data_frac=0.5,
        epochs=1,
        lr=1e-4,
        seed=0,
        device=CPU,
        last_path=tmp_path / "last.pt",
        train_cfg=TOY_CFG,
    )
    assert int((~keep).sum()) == round(0.2 * 512)
    assert accuracy(pruned, test) >= accuracy(model, test) - 0.2  # fine-pruning keeps BA
    assert set(torch.nonzero(~keep).flatten().tolist()) <= zero_channels(pruned, test.tensors[0])
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())
    save_classifier(pruned, tmp_path / "pruned.pt")
    loaded = load_classifier(tmp_path / "pruned.pt")
    np.testing.assert_allclose(
        predict_proba(loaded, test.tensors[0], device=CPU),
        predict_proba(pruned, test.tensors[0], device=CPU),
        atol=1e-6,
    )


def test_distilled_student_agrees_with_teacher(
    toy: tuple[Classifier, TensorDataset, TensorDataset], tmp_path: Path
) -> None:
    teacher, train, test = toy
    student = distill(
        teacher, train, "resnet18", 2.0, 2, 1e-3, 1, CPU, tmp_path / "last.pt", train_cfg=TOY_CFG
    )
    assert student is not teacher
    assert not torch.equal(student.net.fc.weight, teacher.net.fc.weight)
    x = test.tensors[0]
    agree = (
        predict_proba(student, x, device=CPU).argmax(1)
        == predict_proba(teacher, x, device=CPU).argmax(1)
    ).mean()
    assert agree >= 0.8  # chance is 0.5 on the balanced toy problem


class _Inverted(torch.nn.Module):
    """A teacher that answers the opposite of the toy model (negated logits): wrong on purpose."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.inner(x)


def test_distilled_student_follows_the_teacher_not_the_labels(
    toy: tuple[Classifier, TensorDataset, TensorDataset], tmp_path: Path
) -> None:
    """The student learns the teacher's predictions, even where they contradict the labels.

    The teacher is the toy model with negated logits, so it is wrong on (almost) every image.
    Stated agreement: the student's argmax equals the teacher's on at least 80 % of the
    held-out images (chance 50 %); its accuracy against the true labels is therefore <= 20 %.

    Breakage guarded: ``distill`` training the student on the dataset's hard labels instead of
    the teacher's soft labels (e.g. ``train_classifier(student, subset, ...)`` without the KD
    loss). A student of an accurate teacher agrees with it either way; this one cannot.
    """
    model, train, test = toy
    teacher = _Inverted(copy.deepcopy(model)).eval()
    x = test.tensors[0]
    teacher_pred = predict_proba(teacher, x, device=CPU).argmax(1)
    assert (teacher_pred != test.tensors[1].numpy()).mean() >= 0.9  # the teacher is wrong
    student = distill(
        teacher, train, "resnet18", 2.0, 3, 1e-3, 1, CPU, tmp_path / "last.pt", train_cfg=TOY_CFG
    )
    student_pred = predict_proba(student, x, device=CPU).argmax(1)
    assert (student_pred == teacher_pred).mean() >= 0.8
