"""CheXpert observation names and task labels (docs/methods/data.md: CheXpert labels).

CheXpert values: 1.0 positive, 0.0 negative, -1.0 uncertain, blank (NaN) = not mentioned.
The task is binary on one configured observation. Blank counts as negative (the usual
reading of CheXpert's "not mentioned"); uncertain follows the configured policy
(Irvin et al., AAAI 2019: U-Ones, U-Zeros, U-Ignore).
"""

from __future__ import annotations

import numpy as np

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
UNCERTAINTY_POLICIES = ("u_ones", "u_zeros", "ignore")
IGNORE = -1


def task_labels(labels: np.ndarray, target_observation: str, uncertainty: str) -> np.ndarray:
    """Binary labels (int64) of one observation; ``IGNORE`` (-1) marks rows to leave out.

    ``labels`` is the ``(N, 14)`` float array of the metadata/HDF5 (NaN blank, -1 uncertain).
    """
    if target_observation not in OBSERVATIONS:
        raise ValueError(
            f"unknown observation {target_observation!r}; expected one of {OBSERVATIONS}"
        )
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_POLICIES}, got {uncertainty!r}")
    col = np.asarray(labels, dtype=np.float64)[:, OBSERVATIONS.index(target_observation)]
    out = np.zeros(col.shape, dtype=np.int64)
    out[col == 1.0] = 1
    unc = col == -1.0
    if uncertainty == "u_ones":
        out[unc] = 1
    elif uncertainty == "ignore":
        out[unc] = IGNORE
    return out
