"""Labelled views over the HDF5 image stores used by the training stages."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from medmark.data.h5 import H5Images, read_rows, read_table
from medmark.data.labels import IGNORE, OBSERVATIONS, task_labels


def table_task_labels(h5_path: str | Path, task: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(splits, y)`` for every row of an image HDF5 under the configured task."""
    table = read_table(h5_path)
    y = task_labels(
        table[list(OBSERVATIONS)].to_numpy(), task["target_observation"], task["uncertainty"]
    )
    return table["split"].to_numpy(), y


class Labeled(Dataset[tuple[torch.Tensor, int]]):
    """Items ``(x, y)`` of an :class:`H5Images`, ``y`` looked up by HDF5 row."""

    def __init__(self, images: H5Images, y_by_row: np.ndarray) -> None:
        self.images = images
        self.y_by_row = np.asarray(y_by_row, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, row = self.images[i]
        return x, int(self.y_by_row[row])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        return [(x, int(self.y_by_row[row])) for x, row in self.images.__getitems__(indices)]


def labeled_split(h5_path: str | Path, task: dict, split: str | None) -> Labeled:
    """Task-labelled rows of ``split`` (all rows if None), rows with an ignored label left out."""
    splits, y = table_task_labels(h5_path, task)
    keep = y != IGNORE
    if split is not None:
        if split not in set(splits.tolist()):
            raise ValueError(f"{h5_path}: no rows in split {split!r} (has {sorted(set(splits))})")
        keep &= splits == split
    return Labeled(H5Images(h5_path, indices=np.flatnonzero(keep)), y)


class WithSaliency(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Items ``(x, s, y)``: image, its saliency map (same row of ``saliency/*.h5``), task label."""

    def __init__(self, labeled: Labeled, saliency_h5: str | Path) -> None:
        self.labeled = labeled
        self.saliency_h5 = Path(saliency_h5)
        with h5py.File(self.saliency_h5, "r") as f, h5py.File(labeled.images.path, "r") as g:
            if not np.array_equal(f["ids"].asstr()[:], g["ids"].asstr()[:]):
                raise ValueError(
                    f"{saliency_h5}: ids do not match {labeled.images.path} row for row"
                )
        self._maps: h5py.Dataset | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.labeled)

    def _dataset(self) -> h5py.Dataset:
        if self._maps is None or self._pid != os.getpid():
            # A handle inherited through fork belongs to the parent: open our own.
            self._maps = h5py.File(self.saliency_h5, "r")["maps"]
            self._pid = os.getpid()
        return self._maps

    @staticmethod
    def _to_tensor(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(m.astype(np.float32)).unsqueeze(0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, row = self.labeled.images[i]
        return x, self._to_tensor(self._dataset()[row]), int(self.labeled.y_by_row[row])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """A whole DataLoader batch: images and maps each read with one sorted pass."""
        items = self.labeled.images.__getitems__(indices)
        rows = np.array([row for _, row in items], dtype=np.int64)
        maps = read_rows(self._dataset(), rows)
        y = self.labeled.y_by_row
        return [
            (x, self._to_tensor(m), int(y[row])) for (x, row), m in zip(items, maps, strict=True)
        ]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = state["_pid"] = None
        return state


__all__ = ["IGNORE", "Labeled", "WithSaliency", "labeled_split", "table_task_labels"]
