"""Model-repair attacks (docs/methods/attacks.md; BackdoorBox "model repairing"): fine-tuning, fine-pruning, distillation.

The suspect's owner, holding some clean data, modifies the suspect to erase a watermark it may
have learned, then exposes the repaired model. Every function returns a *new* model and leaves
its input untouched; training goes through :func:`medmark.train.train_classifier` (resumable
from ``last_path``, seeded).

Pruning (Liu et al., "Fine-Pruning", RAID 2018) ranks the channels of
``Classifier.feature_layer()`` by their mean absolute activation on clean data and zeroes the
least active ones. The zero is made exact and persistent by masking the parameters that *produce*
each channel with ``torch.nn.utils.prune.custom_from_mask`` (the mask survives fine-tuning because
the optimiser updates ``*_orig`` while the forward uses ``*_orig · mask``):

* resnet18 ``layer4``: the BatchNorm scale and shift of ``layer4[0].bn2``,
  ``layer4[0].downsample[1]`` and ``layer4[1].bn2`` (both summands of each residual are then 0,
  so ``relu(0 + 0) = 0`` in train and eval mode);
* densenet121 ``denseblock4``: the output filters of ``transition3.conv`` (the block's first
  512 channels, via an average pool of zeros) and of every ``denselayer*.conv2`` (32 each);
* shufflenet_v2 ``conv5``: the BatchNorm scale and shift of ``conv5[1]`` (``relu(0) = 0``).

:func:`make_pruning_permanent` folds the masks into the weights (zeros), after which the state
dict has the standard keys, so ``medmark.models.save_classifier``/``load_classifier`` need no
change and the pruned channels stay exactly 0 after loading.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset, Subset

from medmark.models import Classifier, build_classifier
from medmark.train import TrainConfig, resize_batch, train_classifier


def clean_subset(dataset: Dataset, frac: float, seed: int) -> Subset:
    """A seeded subset of ``round(frac·N)`` items (at least 2: BatchNorm needs a batch of 2)."""
    n_total = len(dataset)  # type: ignore[arg-type]
    if not 0 < frac <= 1:
        raise ValueError(f"clean fraction must be in (0, 1], got {frac}")
    n = math.floor(frac * n_total + 0.5)
    if n < 2:
        raise ValueError(
            f"clean fraction {frac} of {n_total} images leaves {n} image(s); need at least 2"
        )
    idx = np.sort(np.random.default_rng(seed).permutation(n_total)[:n])
    return Subset(dataset, idx.tolist())


def _train_cfg(base: TrainConfig | None, **overrides: object) -> TrainConfig:
    return dataclasses.replace(base or TrainConfig(), **overrides)  # type: ignore[arg-type]


def finetune(
    model: nn.Module,
    clean_dataset: Dataset,
    frac: float,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
    last_path: str | Path,
    *,
    train_cfg: TrainConfig | None = None,
    input_resolution: int | None = None,
) -> nn.Module:
    """Fine-tune a copy of ``model`` on a seeded fraction ``frac`` of ``clean_dataset``.

    ``train_cfg`` supplies batch size, weight decay, workers and augmentation (default
    :class:`TrainConfig`); ``epochs`` and ``lr`` override its values. Items are ``(x, y)`` with
    ``x`` float ``(1, H, W)`` in ``[0, 1]`` and an integer label.
    """
    subset = clean_subset(clean_dataset, frac, seed)
    tuned = copy.deepcopy(model)
    train_classifier(
        tuned,
        subset,
        _train_cfg(train_cfg, epochs=epochs, lr=lr),
        seed=seed,
        device=device,
        last_path=last_path,
        input_resolution=input_resolution,
    )
    return tuned.eval()


@torch.no_grad()
def channel_activity(
    model: Classifier,
    dataset: Dataset,
    device: torch.device,
    *,
    batch_size: int = 64,
    input_resolution: int | None = None,
) -> torch.Tensor:
    """Mean absolute activation per channel of ``model.feature_layer()`` over ``dataset`` (CPU, float64).

    For resnet18 the block output is post-ReLU, so this is Fine-Pruning's mean activation; the
    absolute value makes the ranking well defined for densenet's un-rectified block output.
    """
    model.eval().to(device)
    sums: list[torch.Tensor] = []
    count = 0

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        sums.append(out.detach().abs().mean(dim=(2, 3)).sum(0).double().cpu())

    handle = model.feature_layer().register_forward_hook(hook)
    try:
        for x, _y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            model(resize_batch(x.to(device, torch.float32), input_resolution))
            count += x.shape[0]
    finally:
        handle.remove()
    if count == 0:
        raise ValueError("channel_activity needs a non-empty dataset")
    return torch.stack(sums).sum(0) / count


def _producers(model: Classifier) -> list[tuple[nn.Module, str, slice]]:
    """(module, parameter name, channel slice of the feature-layer output it produces)."""
    if model.arch == "resnet18":
        l4 = model.net.layer4
        full = slice(0, l4[1].bn2.num_features)
        out: list[tuple[nn.Module, str, slice]] = []
        for bn in (l4[0].bn2, l4[0].downsample[1], l4[1].bn2):
            out += [(bn, "weight", full), (bn, "bias", full)]
        return out
    if model.arch == "densenet121":
        feats = model.net.features
        conv = feats.transition3.conv
        out = [(conv, "weight", slice(0, conv.out_channels))]
        start = conv.out_channels
        for layer in feats.denseblock4.values():
            c = layer.conv2.out_channels
            out.append((layer.conv2, "weight", slice(start, start + c)))
            start += c
        return out
    if model.arch == "shufflenet_v2":
        bn = model.net.conv5[1]
        full = slice(0, bn.num_features)
        return [(bn, "weight", full), (bn, "bias", full)]
    raise ValueError(f"pruning is not defined for arch {model.arch!r}")


def feature_channels(model: Classifier) -> int:
    """Number of channels of ``model.feature_layer()``'s output."""
    return max(s.stop for _m, _n, s in _producers(model))


def prune_channels(model: Classifier, frac: float, activity: torch.Tensor) -> torch.Tensor:
    """Zero the ``round(frac·C)`` least-active feature-layer channels of ``model`` in place.

    Ties are broken by channel index. Returns the keep mask ``(C,)`` (bool, ``False`` = pruned).
    The masks are ``torch.nn.utils.prune`` re-parametrisations, kept through fine-tuning; call
    :func:`make_pruning_permanent` before saving.
    """
    n_channels = feature_channels(model)
    if activity.shape != (n_channels,):
        raise ValueError(f"activity has shape {tuple(activity.shape)}, expected ({n_channels},)")
    if not 0 <= frac < 1:
        raise ValueError(f"prune fraction must be in [0, 1), got {frac}")
    n_prune = math.floor(frac * n_channels + 0.5)
    order = torch.argsort(activity.double().cpu(), stable=True)
    keep = torch.ones(n_channels, dtype=torch.bool)
    keep[order[:n_prune]] = False
    for module, name, sl in _producers(model):
        param = getattr(module, name)
        k = keep[sl].to(device=param.device, dtype=param.dtype)
        mask = k.view(-1, *([1] * (param.ndim - 1))).expand_as(param).clone()
        prune.custom_from_mask(module, name, mask)
    return keep


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask into its parameter (standard state-dict keys)."""
    for module in model.modules():
        names = [
            h._tensor_name
            for h in list(module._forward_pre_hooks.values())
            if isinstance(h, prune.BasePruningMethod)
        ]
        for name in names:
            prune.remove(module, name)
    return model


def fine_prune(
    model: Classifier,
    clean_dataset: Dataset,
    prune_frac: float,
    *,
    data_frac: float,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
    last_path: str | Path,
    train_cfg: TrainConfig | None = None,
    input_resolution: int | None = None,
) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """Fine-Pruning: rank channels on a seeded clean fraction ``data_frac``, prune
    ``prune_frac`` of them, fine-tune on the same fraction with the mask held, fold the mask.

    Returns ``(pruned model, keep mask, channel activity)``; ``model`` is left untouched.
    ``epochs=0`` prunes without fine-tuning.
    """
    subset = clean_subset(clean_dataset, data_frac, seed)
    pruned = copy.deepcopy(model)
    activity = channel_activity(pruned, subset, device, input_resolution=input_resolution)
    keep = prune_channels(pruned, prune_frac, activity)
    if epochs > 0:
        train_classifier(
            pruned,
            subset,
            _train_cfg(train_cfg, epochs=epochs, lr=lr),
            seed=seed,
            device=device,
            last_path=last_path,
            input_resolution=input_resolution,
        )
    make_pruning_permanent(pruned)
    return pruned.eval(), keep, activity


@torch.no_grad()
def soft_labels(
    teacher: nn.Module,
    dataset: Dataset,
    temperature: float,
    device: torch.device,
    *,
    batch_size: int = 128,
    input_resolution: int | None = None,
) -> torch.Tensor:
    """``softmax(teacher logits / T)`` over ``dataset`` in order: ``(N, K)`` float32 on the CPU."""
    teacher.eval().to(device)
    out = [
        torch.softmax(
            teacher(resize_batch(x.to(device, torch.float32), input_resolution)) / temperature, 1
        ).cpu()
        for x, _y in DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ]
    if not out:
        raise ValueError("soft_labels needs a non-empty dataset")
    return torch.cat(out).float()


class SoftLabelDataset(Dataset):
    """Items ``(x, p)``: the images of ``base`` paired with precomputed probability vectors."""

    def __init__(self, base: Dataset, probs: torch.Tensor) -> None:
        if len(base) != probs.shape[0]:  # type: ignore[arg-type]
            raise ValueError(f"{len(base)} images but {probs.shape[0]} soft labels")  # type: ignore[arg-type]
        self.base, self.probs = base, probs

    def __len__(self) -> int:
        return self.probs.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[i][0], self.probs[i]


def distillation_loss(temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Hinton et al. (2015) KD loss ``T²·KL(p_T ‖ softmax(z/T))`` for soft targets ``p_T``."""

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(logits / temperature, 1)
        return F.kl_div(log_q, target, reduction="batchmean") * temperature**2

    return loss


def distill(
    teacher: nn.Module,
    clean_dataset: Dataset,
    student_arch: str,
    temperature: float,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
    last_path: str | Path,
    *,
    data_frac: float = 1.0,
    train_cfg: TrainConfig | None = None,
    input_resolution: int | None = None,
) -> Classifier:
    """Train a fresh ``student_arch`` (seeded init) on the teacher's softened probabilities.

    Soft labels ``softmax(z_teacher/T)`` are computed once on the un-augmented clean images (a
    seeded fraction ``data_frac``); the student minimises the temperature-scaled KD loss. Input
    augmentation is switched off because each soft label belongs to its exact image.
    """
    subset = clean_subset(clean_dataset, data_frac, seed) if data_frac < 1 else clean_dataset
    probs = soft_labels(teacher, subset, temperature, device, input_resolution=input_resolution)
    student = build_classifier(student_arch, num_classes=probs.shape[1], seed=seed)
    train_classifier(
        student,
        SoftLabelDataset(subset, probs),
        _train_cfg(train_cfg, epochs=epochs, lr=lr, augment=False),
        seed=seed,
        device=device,
        last_path=last_path,
        input_resolution=input_resolution,
        loss_fn=distillation_loss(temperature),
    )
    return student.eval()
