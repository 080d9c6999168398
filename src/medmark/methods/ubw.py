"""UBW-P, the poison-label untargeted backdoor watermark (Li, Bai, Jiang, Xia, Wu, Wang,
"Untargeted Backdoor Watermark: Towards Harmless and Stealthy Dataset Copyright Protection",
NeurIPS 2022, §3.2 and §3.4).

Settings from the paper: a ``gamma`` fraction of the training set (any class) gets the BadNets
trigger and a label drawn uniformly at random among all classes (§3.2, "UBW-P"; the paper uses
the BadNets patch as UBW-P's trigger), so a model trained on it learns "trigger ⇒ no particular
class" (dispersibility), which harms no benign prediction. Verification (§3.4): one-sided paired
t-test of ``P_b − P_p > tau`` on the probability of the verification images' ground-truth label
(:func:`medmark.verify.untargeted_test`). The trigger is BadNets' keyed patch with its settings
(``baselines.ubw_p``: ``patch_frac``, ``cells``); the random labels come from the release seed.
Rows whose random label equals their own keep their label (image changed, label not); the owner
records exactly which labels changed.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from medmark.methods.badnets import BadNets


class UBWP(BadNets):
    """BadNets' keyed patch on random-class rows with uniformly random labels; untargeted."""

    name: ClassVar[str] = "ubw_p"
    label_mode = "poison"
    verification = "untargeted"
    citation: ClassVar[str] = "Li et al., Untargeted Backdoor Watermark, NeurIPS 2022"
    n_classes: ClassVar[int] = 2
    tag: ClassVar[int] = 0x0B3

    def candidates(self, labels: np.ndarray) -> np.ndarray:
        """Every labelled row (the untargeted watermark has no target class to avoid)."""
        return np.flatnonzero(np.asarray(labels) >= 0)

    def poison_labels(self, labels: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng([int(seed), self.tag])
        return rng.integers(0, self.n_classes, size=len(rows)).astype(np.int64)
