"""Training of the X-Mark generator against a frozen surrogate (paper §3.3; docs/methods/xmark.md).

Adam on the generator only; the surrogate is frozen (eval mode, no parameter gradients), so only
``delta`` learns to carry target-class evidence. Every term of :class:`XMarkLoss` is averaged over
the batches of an epoch and written, with the total and the epoch's wall time, to ``loss_csv``
(atomically, every epoch). The full state (generator, optimiser, epoch, history) is written
atomically to ``last_path`` after every epoch; a rerun resumes from it (:mod:`medmark.resumable`,
shared with :mod:`medmark.train`). The shuffle order and the random rescale factors are re-seeded from
``(key, epoch)`` at each epoch start, so a resumed run on CPU ends with the same weights as an
uninterrupted one, and the same key gives the same generator.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from medmark.accel import Accel, setup_backends
from medmark.io import stable_hash
from medmark.methods.xmark.config import resolve_xmark
from medmark.methods.xmark.generator import GeneratorConfig, XMarkGenerator, build_generator
from medmark.methods.xmark.losses import TERMS, XMarkLoss
from medmark.resumable import Checkpoint, epoch_loader, write_history

log = logging.getLogger(__name__)

LOSS_COLUMNS: tuple[str, ...] = ("epoch", *TERMS, "total", "seconds")


class ArrayTriples(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """In-memory items ``(x (1,R,R) in [0,1], s (1,R,R) in [0,1], y)`` for tests and small data.

    ``images_u8`` uint8 ``(N, R, R)``, ``saliency`` float ``(N, R, R)`` in ``[0, 1]``, ``labels``
    int ``(N,)`` in ``{0, 1}``.
    """

    def __init__(self, images_u8: np.ndarray, saliency: np.ndarray, labels: np.ndarray) -> None:
        images_u8 = np.asarray(images_u8)
        saliency = np.asarray(saliency, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if images_u8.dtype != np.uint8 or images_u8.ndim != 3:
            raise ValueError(
                f"images must be uint8 (N, R, R), got {images_u8.dtype} {images_u8.shape}"
            )
        if saliency.shape != images_u8.shape:
            raise ValueError(f"saliency shape {saliency.shape} != images shape {images_u8.shape}")
        if labels.shape != (images_u8.shape[0],):
            raise ValueError(f"labels must be ({images_u8.shape[0]},), got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 or 1 (drop ignored/uncertain rows first)")
        if saliency.size and (saliency.min() < 0 or saliency.max() > 1):
            raise ValueError("saliency must lie in [0, 1]")
        self.images = torch.from_numpy(images_u8)
        self.saliency = torch.from_numpy(saliency)
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x = self.images[i].to(torch.float32).div(255.0).unsqueeze(0)
        return x, self.saliency[i].unsqueeze(0), int(self.labels[i])


def write_loss_csv(history: list[dict[str, float]], path: str | Path) -> None:
    """Write the per-epoch loss history (:data:`LOSS_COLUMNS`) atomically."""
    write_history(history, path, fieldnames=LOSS_COLUMNS)


FEEDING_KEYS = ("num_workers", "bf16", "channels_last")


def _fingerprinted(xc: dict[str, Any]) -> dict[str, Any]:
    """The config a checkpoint is bound to: without ``num_workers`` (same batches either way)
    and without the accelerator switches while they are off, so checkpoints written before
    these keys existed stay resumable."""
    return {k: v for k, v in xc.items() if k not in FEEDING_KEYS or (k != "num_workers" and v)}


def train_generator(
    dataset: Dataset,
    surrogate: nn.Module,
    cfg: dict[str, Any],
    *,
    key: int,
    device: torch.device,
    last_path: str | Path,
    loss_csv: str | Path,
    target_class: int = 1,
    surrogate_resolution: int | None = None,
) -> XMarkGenerator:
    """Train a generator seeded by ``key`` on ``(x, s, y)`` items; resume from ``last_path``.

    ``cfg`` is the ``xmark`` config section (missing keys take the schema defaults; its
    ``num_workers``, ``bf16`` and ``channels_last`` say how batches are fed, see
    :mod:`medmark.accel`). Returns the generator in eval mode with ``.meta`` (key, resolved
    config, target class, history).
    """
    xc = resolve_xmark(cfg)
    last_path = Path(last_path)
    accel = Accel(device, bf16=bool(xc["bf16"]), channels_last=bool(xc["channels_last"]))
    setup_backends(device)
    generator = accel.prepare(build_generator(GeneratorConfig.from_xmark(xc, key), seed=key))
    accel.prepare(surrogate.eval())
    for p in surrogate.parameters():
        p.requires_grad_(False)
    objective = XMarkLoss(
        surrogate, xc, target_class=target_class, surrogate_resolution=surrogate_resolution
    ).to(device)
    opt = torch.optim.Adam(generator.parameters(), lr=float(xc["lr"]))
    fingerprint = stable_hash(
        {
            "xmark": _fingerprinted(xc),
            "key": key,
            "target_class": target_class,
            "sres": surrogate_resolution,
        }
    )
    ckpt = Checkpoint(
        last_path,
        stateful={"generator": generator, "optimizer": opt},
        identity={"fingerprint": fingerprint},
        what="config/key",
        extra={"xmark": xc, "key": key},
    )
    start, history = ckpt.resume(device)

    epochs, batch_size = int(xc["epochs"]), int(xc["batch_size"])
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        loader, scale_gen = epoch_loader(
            dataset,
            seed=key,
            epoch=epoch,
            batch_size=batch_size,
            num_workers=int(xc["num_workers"]),
            accel=accel,
        )
        generator.train()
        sums = dict.fromkeys((*TERMS, "total"), 0.0)
        batches = 0
        for x, s, y in loader:
            x = accel.layout(accel.batch(x))
            s = accel.layout(accel.batch(s))
            y = accel.batch(torch.as_tensor(y), None)
            with accel.autocast():
                x_wm, delta = generator(x, s)
                full = None
                if generator.keyed:
                    c = generator.carrier(x.shape[-2], x.shape[-1]).to(device)
                    full = generator.epsilon * generator.mask(s) * c
                terms = objective(x, x_wm, delta, y, scale_gen, full=full)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            values = {k: float(v.detach()) for k, v in terms.items()}
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"epoch {epoch}: non-finite loss terms {bad}: {values}")
            for k in sums:
                sums[k] += values[k]
            batches += 1
        row: dict[str, float] = {"epoch": epoch}
        row.update({k: v / max(batches, 1) for k, v in sums.items()})
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        log.info(
            "xmark key %d epoch %d total %.4f (%s) %.1fs",
            key,
            epoch,
            row["total"],
            ", ".join(f"{k} {row[k]:.4f}" for k in TERMS),
            row["seconds"],
        )
        write_loss_csv(history, loss_csv)
        ckpt.save(epoch, history)
    if start >= epochs:  # already complete: make sure the CSV exists
        write_loss_csv(history, loss_csv)
    generator.eval()
    generator.meta = {  # type: ignore[attr-defined]
        "key": key,
        "xmark": xc,
        "target_class": target_class,
        "surrogate_resolution": surrogate_resolution,
        "history": history,
    }
    return generator
