"""Device resolution and seeding: ``device`` is ``auto|cpu|cuda`` everywhere, never hard-coded."""

from __future__ import annotations

import hashlib
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


#: Suspect, reference and population seeds are small integers; a stream seed is at least this.
STREAM_SEED_FLOOR = 2**31


def stream_seed(seed: int, stream: str) -> int:
    """The torch/NumPy seed of a training job of role ``stream`` given the config's ``seed``.

    Two roles that share a seed number and a recipe would otherwise train the same network: the
    owner's surrogate (``surrogate.seed``) and the clean Ind-M suspect of the same seed, both on
    the release split. The stream seed comes from a NumPy ``SeedSequence`` over a hash of the
    role's name and ``seed``, in ``[2**31, 2**32)``: it cannot equal a schema seed below
    :data:`STREAM_SEED_FLOOR`, and two roles collide only by a 32-bit hash accident.
    """
    tag = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little")
    state = np.random.SeedSequence([tag, int(seed)]).generate_state(1, np.uint32)[0]
    return int(state) | STREAM_SEED_FLOOR


def set_threads(n: int | None) -> None:
    """Limit torch intra-op threads to the cores Snakemake gave the job (``threads:``)."""
    if n is not None and n > 0:
        torch.set_num_threads(int(n))
