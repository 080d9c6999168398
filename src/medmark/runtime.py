"""Device resolution and seeding: ``device`` is ``auto|cpu|cuda`` everywhere, never hard-coded."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config ``device`` value to a torch device.

    ``auto`` picks CUDA when available and logs the choice; ``cuda`` without a GPU is an
    error (no silent fallback: the user asked for a GPU).
    """
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch.cuda.is_available() is False")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        log.info("device auto -> %s", name)
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; make CPU kernels deterministic where torch allows it."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def set_threads(n: int | None) -> None:
    """Limit torch intra-op threads to the cores Snakemake gave the job (``threads:``)."""
    if n is not None and n > 0:
        torch.set_num_threads(int(n))
