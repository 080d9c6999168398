"""One supervised training recipe for surrogates, suspects and attack students.

Resumable (:mod:`medmark.resumable`): after every epoch the full state (weights, optimiser,
scheduler, history) is written atomically to ``last.pt``; a rerun after a kill continues from it.
Every source of randomness (shuffle order, augmentation) is re-seeded from ``(seed, epoch)`` at the
start of each epoch, so an interrupted-and-resumed run on CPU yields the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from medmark.accel import Accel, setup_backends
from medmark.resumable import Checkpoint, epoch_loader, write_history

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_classifier` (config keys ``*.train``)."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    num_workers: int = 0
    augment: bool = True
    bf16: bool = False
    channels_last: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: every field, except the accelerator
        switches while they are off (checkpoints written before they existed stay valid)."""
        d = asdict(self)
        for key in ACCEL_KEYS:
            if not d[key]:
                del d[key]
        return d


ACCEL_KEYS = ("bf16", "channels_last")


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Antialiased bilinear resize of an image batch to ``size``×``size`` (no-op if equal)."""
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild geometric/intensity jitter (small shift, gain/bias); no flips (anatomy is lateralised)."""
    n = x.shape[0]
    dev = x.device
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1).to(dev) * 0.06
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.1).to(dev)
    bias = ((torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.05).to(dev)
    return (x * gain + bias).clamp(0, 1)


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    last_path: str | Path,
    history_csv: str | Path | None = None,
    input_resolution: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``train_set`` (items ``(x (1,H,W) in [0,1], y)``), resuming from ``last_path``.

    ``y`` may be an integer class (cross-entropy) or a probability vector (soft labels, used by the
    distillation attack: KL to the teacher's distribution). Returns the per-epoch history.
    """
    last_path = Path(last_path)
    accel = Accel(device, bf16=cfg.bf16, channels_last=cfg.channels_last)
    setup_backends(device)
    model = accel.prepare(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    ckpt = Checkpoint(
        last_path,
        stateful={"model": model, "optimizer": opt, "scheduler": sched},
        identity={"config": cfg.fingerprint(), "seed": seed},
        what="config/seed",
    )
    start, history = ckpt.resume(device)

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loader, aug_gen = epoch_loader(
            train_set,
            seed=seed,
            epoch=epoch,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            accel=accel,
        )
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in loader:
            x = resize_batch(accel.batch(x), input_resolution)
            y = accel.batch(y, None)
            if cfg.augment:
                x = augment_batch(x, aug_gen)
            x = accel.layout(x)
            with accel.autocast():
                logits = model(x)
                if loss_fn is not None:
                    loss = loss_fn(logits, y)
                elif y.dtype.is_floating_point:
                    loss = F.kl_div(F.log_softmax(logits, 1), y, reduction="batchmean")
                else:
                    loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = x.shape[0]
            total += n
            loss_sum += float(loss.detach()) * n
            target = y.argmax(1) if y.dtype.is_floating_point else y
            correct += int((logits.argmax(1) == target).sum())
        sched.step()
        row = {
            "epoch": epoch,
            "loss": loss_sum / max(total, 1),
            "train_acc": correct / max(total, 1),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log.info(
            "epoch %d loss %.4f acc %.3f (%.1fs)",
            epoch,
            row["loss"],
            row["train_acc"],
            row["seconds"],
        )
        ckpt.save(epoch, history)
    if history_csv is not None:
        write_history(history, history_csv)
    model.eval()
    return history


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 128,
    input_resolution: int | None = None,
) -> np.ndarray:
    """Softmax probabilities ``(N, K)`` of ``model`` on ``images`` (uint8 ``(N,H,W)`` or float in [0,1])."""
    model.eval().to(device)
    x_all = torch.as_tensor(images)
    if x_all.dtype == torch.uint8:
        x_all = x_all.float() / 255.0
    if x_all.ndim == 3:
        x_all = x_all.unsqueeze(1)
    out = []
    for i in range(0, x_all.shape[0], batch_size):
        x = resize_batch(x_all[i : i + batch_size].to(device, torch.float32), input_resolution)
        out.append(torch.softmax(model(x), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2), np.float32)
