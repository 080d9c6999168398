"""End-to-end runs of the whole DAG: the tiny preset (content checks) and the embedded default."""

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from medmark.data.labels import OBSERVATIONS
from tests.workflow_utils import copy_workflow, run_snakemake

pytestmark = [pytest.mark.slow, pytest.mark.snakemake]
OWNER_KEYS = {
    "poisoned_ids",
    "verification_ids",
    "target_class",
    "key",
    "tau",
    "alpha",
    "generator",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("tiny"))
    run_snakemake(wf, "--cores", "2", "all", "--configfile", "config/presets/tiny.yaml")
    return wf


def test_prep_hdf5_contents(tiny):
    r = tiny / "results"
    splits = pd.read_csv(r / "data/splits.csv")
    meta = pd.read_csv(r / "data/metadata.csv")
    assert splits.groupby("patient")["split"].nunique().max() == 1  # patient-disjoint
    for res in (32, 64):
        with h5py.File(r / f"prep/r{res}.h5") as f:
            n = f["images"].shape[0]
            assert f["images"].dtype == np.uint8 and f["images"].shape == (n, res, res)
            assert f["images"].chunks == (1, res, res) and f["images"].compression == "gzip"
            assert f["labels"].dtype == np.float32 and f["labels"].shape == (n, 14)
            labels = f["labels"][:]
            assert set(np.unique(labels[~np.isnan(labels)])) <= {-1.0, 0.0, 1.0}
            assert np.isnan(labels).any()  # blanks stay blank
            for attr in ("source_sha256", "config_hash", "medmark_version", "normalization"):
                assert f.attrs[attr], attr
            ids = f["ids"].asstr()[:]
        frontal = meta.loc[meta["view"] == "Frontal", "image_id"]
        assert set(ids) <= set(frontal) and len(ids) == len(frontal)


def test_release_is_clean_label_and_holds_no_secret(tiny):
    base = tiny / "results/main/xmark/owner"
    owner = json.loads((base / "owner/owner.json").read_text())
    assert owner.keys() >= OWNER_KEYS
    poisoned = set(owner["poisoned_ids"])
    assert poisoned
    with h5py.File(tiny / "results/prep/r32.h5") as f, h5py.File(base / "release/r32.h5") as g:
        src_ids, rel_ids = f["ids"].asstr()[:], g["ids"].asstr()[:]
        src = {i: k for k, i in enumerate(src_ids)}
        rows = np.array([src[i] for i in rel_ids])
        np.testing.assert_array_equal(g["labels"][:], f["labels"][:][rows])  # labels untouched
        changed = np.any(g["images"][:] != f["images"][:][rows], axis=(1, 2))
    assert set(rel_ids[changed]) <= poisoned  # only poisoned (target-class) images differ
    target = OBSERVATIONS.index("Pleural Effusion")
    with h5py.File(base / "release/r32.h5") as g:
        lab = g["labels"][:, target]
        ids = g["ids"].asstr()[:]
    assert all(lab[list(ids).index(i)] == 1.0 for i in poisoned)
    release_files = [p for p in (base / "release").rglob("*") if p.is_file()]
    owner_names = {p.name for p in (base / "owner").iterdir()}
    assert not {p.name for p in release_files} & owner_names
    some_secret = sorted(poisoned)[0]
    for p in release_files:
        if p.suffix in (".csv", ".json"):
            assert owner["generator"]["sha256"] not in p.read_text()
    tree = base / "release/CheXpert-v1.0-small-xmark"
    csv = pd.read_csv(tree / "train.csv")
    assert list(csv.columns[:5]) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert all((tree.parent / p).exists() for p in csv["Path"])
    assert some_secret  # ids are public image names; the secret is which ones were marked


def test_verification_summaries_and_report(tiny):
    summaries = list((tiny / "results/main/xmark/verify").rglob("summary.json"))
    assert len(summaries) == 1 + 1 + 3 * 2  # Malicious, Ind-Wp, 3 independent x 2 seeds
    for s in summaries:
        d = json.loads(s.read_text())
        assert d["verdict"] in ("detected", "not detected")
        assert {
            "p_value",
            "log10_p",
            "delta_p",
            "wsr",
            "benign_accuracy",
            "auroc",
            "params",
        } <= d.keys()
        assert (s.parent / "per_image.csv").exists()
    table = (tiny / "results/main/report/verification.md").read_text()
    assert re.search(r"\| none \| Malicious \| resnet18 \|", table)
    for png in ("pvalues.png", "examples.png"):
        assert (tiny / "results/main/report" / png).stat().st_size > 10_000
    assert "no_laplacian" in (tiny / "results/report/xmark_quality.md").read_text()
    run_snakemake(
        tiny,
        "--cores",
        "1",
        "all",
        "--configfile",
        "config/presets/tiny.yaml",
        "--report",
        "results/report.html",
    )
    html = (tiny / "results/report.html").read_text(errors="replace")
    assert "pvalues.png" in html and "verification.md" in html


def test_scenario_data_is_patient_disjoint(tiny):
    """Ind-D trains on the independent split: no patient of it is in the release."""
    from medmark.data.datasets import labeled_split

    task = {"target_observation": "Pleural Effusion", "uncertainty": "u_zeros"}
    prep = tiny / "results/prep/r32.h5"
    with h5py.File(prep) as f:
        patients = f["patients"].asstr()[:]
    ind_d = set(patients[labeled_split(prep, task, "independent").images.rows])
    with h5py.File(tiny / "results/main/xmark/owner/release/r32.h5") as g:
        released = set(g["patients"].asstr()[:])
    assert ind_d and released and not ind_d & released


def test_attacks_on_tiny_keep_independent_suspects_undetected(tiny):
    run_snakemake(tiny, "--cores", "2", "attacks", "--configfile", "config/presets/tiny.yaml")
    table = pd.read_csv(tiny / "results/main/report/attacks.csv")
    assert set(table["attack"]) == {"none", "finetune_frac0.3", "prune_0.5", "down_0.5", "jpeg_q50"}
    ind_m = table[table["scenario"] == "Ind-M"]
    assert len(ind_m) == 5 and (ind_m["rate_p_lt_alpha"] == 0).all()
    pruned = json.loads(
        (
            tiny / "results/main/xmark/attacked/Malicious/resnet18/seed0/prune_0.5/pruning.json"
        ).read_text()
    )
    assert pruned  # the fine-pruning record (which channels were cut) is kept beside the model
    assert (tiny / "results/main/report/attacks.png").stat().st_size > 10_000


@pytest.mark.heavy
def test_embedded_default_end_to_end(tmp_path):
    """`snakemake --cores 2 all` on the embedded default (the README's main job) completes."""
    wf = copy_workflow(tmp_path / "demo")
    run_snakemake(wf, "--cores", "2", "all", timeout=3 * 3600)
    table = (wf / "results/main/report/verification.md").read_text()
    for scenario in ("Malicious", "Ind-W", "Ind-D", "Ind-M", "Ind-Wp"):
        for arch in ("resnet18", "densenet121"):
            assert f"| none | {scenario} | {arch} |" in table
    bench = sorted(Path(wf / "results/benchmarks").rglob("*.tsv"))
    assert bench, "benchmark files are written"
