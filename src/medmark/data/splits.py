"""Patient-disjoint splits (``docs/methods/data.md``: the unit of leakage is the patient).

Patients (not images) are shuffled with a seeded generator and cut by the configured
fractions (largest-remainder rounding), optionally per stratum "any image of the patient is
positive (1.0) for ``stratify_on``" so small datasets keep the positive rate in every split.
Every image row gets its patient's split (laterals included; later stages keep frontals).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError

SPLIT_COLUMNS = ("image_id", "patient", "split")


def _check_fractions(fractions: dict[str, float]) -> None:
    if not fractions:
        raise ValueError("split fractions are empty")
    bad = {
        k: v
        for k, v in fractions.items()
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1
    }
    if bad:
        raise ValueError(f"split fractions must be numbers in [0, 1]: {bad}")
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total:.6f}: {dict(fractions)}")


def _allocate(n: int, fractions: list[float]) -> list[int]:
    """Largest-remainder counts that sum to ``n`` (ties go to the earlier split)."""
    raw = [f * n for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def patient_splits(
    metadata: pd.DataFrame,
    fractions: dict[str, float],
    seed: int,
    stratify_on: str | None = None,
) -> pd.DataFrame:
    """``image_id, patient, split`` for every metadata row; patient-disjoint and seeded.

    The result depends only on the set of patients (sorted), their strata, ``fractions`` (in
    dict order) and ``seed`` — not on the row order of ``metadata``.
    """
    _check_fractions(fractions)
    for c in ("image_id", "patient"):
        if c not in metadata.columns:
            raise ValueError(f"metadata lacks column {c!r}")
    if metadata["image_id"].duplicated().any():
        dup = metadata.loc[metadata["image_id"].duplicated(), "image_id"].iloc[0]
        raise ValueError(f"metadata has duplicate image_id {dup!r}")
    patients = metadata["patient"].astype(str)
    if stratify_on is not None:
        if stratify_on not in OBSERVATIONS or stratify_on not in metadata.columns:
            raise ValueError(
                f"stratify_on {stratify_on!r} is not an observation column of metadata"
            )
        positive = (metadata[stratify_on] == 1.0).groupby(patients).any()
    else:
        positive = pd.Series(False, index=pd.Index(patients.unique()))
    names = list(fractions)
    fr = [float(fractions[k]) for k in names]
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for stratum in (False, True):
        members = np.array(sorted(positive.index[positive.to_numpy() == stratum]), dtype=object)
        if members.size == 0:
            continue
        members = members[rng.permutation(members.size)]
        start = 0
        for name, count in zip(names, _allocate(members.size, fr), strict=True):
            assign.update(dict.fromkeys(members[start : start + count], name))
            start += count
    return pd.DataFrame(
        {
            "image_id": metadata["image_id"].astype(str).to_numpy(),
            "patient": patients.to_numpy(),
            "split": [assign[p] for p in patients],
        },
        columns=list(SPLIT_COLUMNS),
    )


def check_task_classes(
    metadata: pd.DataFrame,
    splits: pd.DataFrame,
    task: dict,
    file: str = "results/data/splits.csv",
) -> dict[str, dict[str, int]]:
    """Fail right after the splits when the task cannot be trained or verified on them.

    Counts the frontal images (those preprocess keeps) of each split by task label
    (``medmark.data.labels.task_labels``: target class, other class, ignored). The release split
    needs images of the target class (the surrogate's positives, the X-Mark generator's and the
    poisoning's candidates) and of the other class; the verification split needs >= 2 images of
    the other class (the paired test's pairs). Otherwise a DataFormatError names the task and
    gives every count, before any model is trained. Returns the counts.
    """
    from medmark.data.labels import IGNORE, task_labels

    obs, target = task["target_observation"], int(task["target_class"])
    frontal = metadata[metadata["view"] == "Frontal"]
    split_of = dict(zip(splits["image_id"].astype(str), splits["split"].astype(str), strict=True))
    y = task_labels(frontal[list(OBSERVATIONS)].to_numpy(), obs, task["uncertainty"])
    which = frontal["image_id"].astype(str).map(split_of).fillna("").to_numpy()
    counts: dict[str, dict[str, int]] = {}
    for name in sorted(set(which) - {""}):
        sel = y[which == name]
        counts[name] = {
            "target": int((sel == target).sum()),
            "other": int(((sel != target) & (sel != IGNORE)).sum()),
            "ignored": int((sel == IGNORE).sum()),
        }
    problems = []
    release = counts.get("release", {"target": 0, "other": 0, "ignored": 0})
    if release["target"] == 0:
        problems.append("the release split has no frontal image of the target class")
    if release["other"] == 0:
        problems.append("the release split has no frontal image of the other class")
    verification = counts.get("verification", {"target": 0, "other": 0, "ignored": 0})
    if "verification" in set(splits["split"]) and verification["other"] < 2:
        problems.append(
            "the verification split has fewer than 2 frontal non-target images (the paired "
            "test needs at least 2 pairs)"
        )
    if problems:
        shown = "; ".join(
            f"{k}: {v['target']} target / {v['other']} other / {v['ignored']} ignored"
            for k, v in counts.items()
        )
        raise DataFormatError(
            f"task {obs!r} (target_class {target}, uncertainty {task['uncertainty']}): "
            f"{'; '.join(problems)}. Frontal images per split: {shown}. Choose another "
            "task.target_observation or uncertainty policy, or change data.splits/split_seed",
            file=file,
            field="split",
        )
    return counts
