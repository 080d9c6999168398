"""Patient-disjoint, seeded splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmark.data.splits import patient_splits

FRACTIONS = {"release": 0.55, "verification": 0.1, "independent": 0.2, "test": 0.15}


def _metadata(n_patients: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        positive = rng.random() < 0.2
        for s in range(int(rng.integers(1, 4))):
            for view in ("frontal", "lateral")[: int(rng.integers(1, 3))]:
                rows.append(
                    {
                        "image_id": f"patient{p:05d}/study{s + 1}/view1_{view}",
                        "patient": f"patient{p:05d}",
                        "Pleural Effusion": 1.0
                        if positive and s == 0
                        else (np.nan if rng.random() < 0.5 else 0.0),
                    }
                )
    return pd.DataFrame(rows)


def test_patient_disjoint_all_rows_and_fractions() -> None:
    meta = _metadata()
    sp = patient_splits(meta, FRACTIONS, seed=0)
    assert list(sp.columns) == ["image_id", "patient", "split"]
    assert list(sp["image_id"]) == list(meta["image_id"])
    assert sp.groupby("patient")["split"].nunique().max() == 1
    per_patient = sp.drop_duplicates("patient")["split"].value_counts()
    for name, f in FRACTIONS.items():
        assert abs(per_patient[name] - f * meta["patient"].nunique()) <= 1


def test_deterministic_and_seed_dependent() -> None:
    meta = _metadata()
    a = patient_splits(meta, FRACTIONS, seed=3)
    b = patient_splits(meta.sample(frac=1.0, random_state=1), FRACTIONS, seed=3)
    pd.testing.assert_series_equal(
        a.set_index("image_id")["split"].sort_index(), b.set_index("image_id")["split"].sort_index()
    )
    c = patient_splits(meta, FRACTIONS, seed=4)
    assert (a["split"] != c["split"]).any()


def test_stratified_keeps_positives_in_every_split() -> None:
    meta = _metadata(60, seed=2)
    sp = patient_splits(meta, FRACTIONS, seed=0, stratify_on="Pleural Effusion")
    pos_patients = set(meta.loc[meta["Pleural Effusion"] == 1.0, "patient"])
    per = sp.drop_duplicates("patient").assign(pos=lambda d: d["patient"].isin(pos_patients))
    n_pos = len(pos_patients)
    for name, f in FRACTIONS.items():
        got = int(per.loc[per["split"] == name, "pos"].sum())
        assert abs(got - f * n_pos) <= 1, (name, got, f * n_pos)
    assert sp.groupby("patient")["split"].nunique().max() == 1


def test_fraction_errors() -> None:
    meta = _metadata(10)
    with pytest.raises(ValueError, match=r"sum to 1.*release"):
        patient_splits(meta, {"release": 0.5, "test": 0.4}, seed=0)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        patient_splits(meta, {"release": 1.2, "test": -0.2}, seed=0)
    with pytest.raises(ValueError, match="stratify_on"):
        patient_splits(meta, FRACTIONS, seed=0, stratify_on="Flu")
    # within tolerance is fine
    patient_splits(meta, {"a": 0.3333333, "b": 0.3333333, "c": 0.3333334}, seed=0)


def test_duplicate_image_ids_rejected() -> None:
    meta = _metadata(5)
    with pytest.raises(ValueError, match="duplicate image_id"):
        patient_splits(pd.concat([meta, meta.iloc[:1]]), FRACTIONS, seed=0)


def _task_metadata(pe_frontal: list[float]) -> pd.DataFrame:
    """One frontal image per patient with the given Pleural Effusion values (+ one lateral)."""
    from medmark.data.labels import OBSERVATIONS

    rows = []
    for i, v in enumerate(pe_frontal):
        for view in ("Frontal", "Lateral") if i == 0 else ("Frontal",):
            row = dict.fromkeys(OBSERVATIONS, np.nan)
            row["Pleural Effusion"] = 1.0 if view == "Lateral" else v
            row.update(image_id=f"patient{i:05d}/study1/view1_{view.lower()}",
                       patient=f"patient{i:05d}", view=view)  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


TASK = {"target_observation": "Pleural Effusion", "uncertainty": "u_zeros", "target_class": 1}


def test_task_without_target_positives_in_release_fails_right_after_the_splits() -> None:
    """No positive frontal in the release split: error with the counts, before any training.

    Before the fix this was caught only at the X-Mark release step, after the surrogate,
    saliency and generator had trained on it (there was no check to call: ImportError).
    """
    from medmark.data.splits import check_task_classes
    from medmark.errors import DataFormatError

    # positives (and uncertain = negative under u_zeros) only outside the release split; the
    # only positive in the release split is a lateral, which preprocess drops
    meta = _task_metadata([0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    split_of = ["release"] * 4 + ["verification"] * 2 + ["test"] * 2
    splits = pd.DataFrame({"image_id": meta["image_id"], "patient": meta["patient"],
                           "split": [split_of[int(p[-5:])] for p in meta["patient"]]})  # fmt: skip
    with pytest.raises(DataFormatError) as e:
        check_task_classes(meta, splits, TASK, file="splits.csv")
    msg = str(e.value)
    assert "file splits.csv" in msg and "'Pleural Effusion'" in msg
    assert "release split has no frontal image of the target class" in msg
    assert "release: 0 target / 4 other / 0 ignored" in msg
    assert "verification: 1 target / 1 other" in msg
    assert "fewer than 2 frontal non-target" in msg
    ok = _task_metadata([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    counts = check_task_classes(ok, splits, TASK)
    assert counts["release"] == {"target": 1, "other": 3, "ignored": 0}
    ignore = check_task_classes(ok, splits, {**TASK, "uncertainty": "ignore"})
    assert ignore["verification"]["other"] == 2
