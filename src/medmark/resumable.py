"""Checkpoint-resume machinery shared by the two training loops.

Used by :func:`medmark.train.train_classifier` (surrogates, suspects, attack students) and
:func:`medmark.methods.xmark.training.train_generator` (the X-Mark generator, paper §3.3):

- :class:`Checkpoint`: after every epoch the full state (the stateful objects, the history, the
  epoch and what identifies the run) is written atomically to ``last.pt``; a rerun resumes from
  it and refuses a checkpoint written by another run (another config, seed or key).
- :func:`epoch_loader`: every source of randomness (global torch RNG, shuffle order, one
  auxiliary generator for augmentation or rescale factors) is re-seeded from ``(seed, epoch)`` at
  the start of each epoch, so an interrupted-and-resumed run on CPU ends with the same weights as
  an uninterrupted one.
- :func:`write_history`: the per-epoch history as CSV, atomically.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from medmark.accel import Accel
from medmark.io import atomic_path

log = logging.getLogger(__name__)


class Stateful(Protocol):
    """A model, optimiser or scheduler: anything with ``state_dict``/``load_state_dict``."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed used for shuffling and augmentation in ``epoch`` (resume-stable)."""
    return seed * 1_000_003 + epoch


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (a kill leaves the previous file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_history(
    history: Sequence[Mapping[str, float]],
    path: str | Path,
    fieldnames: Sequence[str] | None = None,
) -> None:
    """Write a per-epoch history as CSV atomically.

    Columns: ``fieldnames``, else the keys of the first row (an empty history then gives an
    empty file).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        names = list(fieldnames) if fieldnames is not None else list(history[0]) if history else []
        if names:
            w = csv.DictWriter(f, fieldnames=names)
            w.writeheader()
            w.writerows(history)


@dataclass
class Checkpoint:
    """The ``last.pt`` of one training run.

    ``stateful`` maps on-disk keys to the objects whose state is saved and restored (e.g.
    ``{"model": ..., "optimizer": ..., "scheduler": ...}``); ``identity`` maps on-disk keys to
    values a checkpoint must equal to be resumed; ``extra`` is written, not checked. ``what``
    names the identity in the refusal ("config/seed").
    """

    path: Path
    stateful: dict[str, Stateful]
    identity: dict[str, Any]
    what: str
    extra: dict[str, Any] = field(default_factory=dict)

    def resume(self, device: torch.device) -> tuple[int, list[dict[str, float]]]:
        """Restore from ``path`` if it exists: ``(first epoch to run, history so far)``."""
        if not self.path.exists():
            return 0, []
        state = torch.load(self.path, map_location=device, weights_only=False)
        if any(state.get(k) != v for k, v in self.identity.items()):
            raise ValueError(
                f"{self.path}: checkpoint was written with another {self.what}; "
                "delete it to restart"
            )
        for k, obj in self.stateful.items():
            obj.load_state_dict(state[k])
        start = state["epoch"] + 1
        log.info("resuming %s from epoch %d", self.path, start)
        return start, state["history"]

    def save(self, epoch: int, history: list[dict[str, float]]) -> None:
        """Write the state after ``epoch`` atomically."""
        save_state(
            self.path,
            {
                **{k: obj.state_dict() for k, obj in self.stateful.items()},
                "history": history,
                "epoch": epoch,
                **self.identity,
                **self.extra,
            },
        )


def epoch_loader(
    dataset: Dataset,
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    num_workers: int,
    accel: Accel,
) -> tuple[DataLoader, torch.Generator]:
    """Seed the epoch (:func:`epoch_seed`) and return its shuffled loader and auxiliary generator.

    Sets the global torch seed to the epoch seed ``es``; the shuffle order comes from a generator
    seeded with ``es``, the returned auxiliary one (augmentation, rescale factors) with
    ``es + 1``. The last incomplete batch is dropped unless it is the only one.
    """
    es = epoch_seed(seed, epoch)
    torch.manual_seed(es)
    shuffle_gen = torch.Generator().manual_seed(es)
    aux_gen = torch.Generator().manual_seed(es + 1)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=shuffle_gen,
        num_workers=num_workers,
        drop_last=len(dataset) > batch_size,  # type: ignore[arg-type]
        **accel.loader_kwargs(),
    )
    return loader, aux_gen
