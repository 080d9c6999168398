"""Provenance records and the audit's checks on small synthetic trees (README: "Auditing
results/"); the checks on a real run are in tests/test_audit.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmark.audit import check_verdict, run_audit
from medmark.cli import main
from medmark.io import sha256_file, write_json_atomic
from medmark.provenance import (
    SCHEMA,
    code_files,
    code_hash,
    job_record,
    now,
    record_path,
    sha256_tree,
)
from medmark.verify import verify_suspect, write_verification


def _package(tmp_path: Path) -> tuple[Path, Path]:
    pkg = tmp_path / "src" / "medmark"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "used.py").write_text("from .sub import helper\n\ndef f():\n    return 1\n")
    (pkg / "sub" / "helper.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("Y = 2\n")
    (pkg / "logs.py").write_text("Z = 3\n")
    script = tmp_path / "scripts" / "job.py"
    script.parent.mkdir()
    script.write_text("from medmark.used import f\nfrom medmark.logs import Z\n")
    return pkg, script


def test_code_hash_follows_the_imports_of_the_script(tmp_path: Path) -> None:
    """An edit of a module the script imports (transitively) changes the hash; an edit of an
    unrelated module, of logging, or of a file outside the package does not."""
    pkg, script = _package(tmp_path)
    names = {f.relative_to(tmp_path).as_posix() for f in code_files(script, pkg)}
    assert names == {
        "scripts/job.py",
        "src/medmark/__init__.py",
        "src/medmark/used.py",
        "src/medmark/sub/__init__.py",
        "src/medmark/sub/helper.py",
    }
    first = code_hash(script, pkg)
    (pkg / "unused.py").write_text("Y = 3\n")
    (pkg / "logs.py").write_text("Z = 4\n")
    (tmp_path / "README.md").write_text("edited\n")
    assert code_hash(script, pkg) == first
    (pkg / "sub" / "helper.py").write_text("X = 2\n")
    assert code_hash(script, pkg) != first


def test_sha256_tree_is_deterministic_and_content_based(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name / "d").mkdir(parents=True)
        (tmp_path / name / "d" / "x.txt").write_text("x")
        (tmp_path / name / "y.txt").write_text("y")
    assert sha256_tree(tmp_path / "a") == sha256_tree(tmp_path / "b")
    assert sha256_tree(tmp_path / "a")["files"] == 2
    (tmp_path / "b" / "y.txt").write_text("z")
    assert sha256_tree(tmp_path / "a")["sha256"] != sha256_tree(tmp_path / "b")["sha256"]


def _job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(tmp_path)
    pkg, script = _package(tmp_path)
    (tmp_path / "results" / "a").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("input")
    (tmp_path / "results" / "a" / "out.txt").write_text("output")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    monkeypatch.setenv("MEDMARK_CONFIGFILES", str(tmp_path / "config.yaml"))
    kw = dict(
        rule="r",
        wildcards={"n": 1},
        inputs=["data/in.txt"],
        outputs=["results/a/out.txt"],
        params={"seed": 3, "device": "cpu", "cfg": {"b": 1, "a": (1, 2)}},
        config={"seed": 0},
        script=script,
        repo=tmp_path,
        start=now(),
        end=now(),
        package_dir=pkg,
    )
    return kw


def test_job_record_is_deterministic_apart_from_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = _job(tmp_path, monkeypatch)
    one, two = job_record(**kw), job_record(**kw | {"end": now()})
    for r in (one, two):
        r.pop("start"), r.pop("end")
    assert one == two
    assert one["schema"] == SCHEMA
    assert one["config"]["files"] == {"config.yaml": sha256_file("config.yaml")}
    assert one["outputs"]["results/a/out.txt"]["sha256"] == sha256_file("results/a/out.txt")
    assert one["seeds"] == {"seed": 3, "config.seed": 0}
    assert one["code"]["script"] == "scripts/job.py" and len(one["code"]["code_hash"]) == 64
    assert set(one["versions"]) >= {"torch", "torchvision", "grad-cam", "snakemake", "numpy"}


def test_audit_of_a_small_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clean, then each of missing / changed / extra / stale found with its path; exit codes."""
    kw = _job(tmp_path, monkeypatch)
    write_json_atomic(record_path("results", "r", kw["outputs"]), job_record(**kw))
    out = tmp_path / "audit.json"
    assert main(["audit", "results", "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["clean"]
    (tmp_path / "results" / "extra.txt").write_text("?")
    (tmp_path / "data" / "in.txt").write_text("other input")
    (tmp_path / "src" / "medmark" / "used.py").write_text("def f():\n    return 2\n")
    assert main(["audit", "results", "--out", str(out), "--quiet"]) == 1
    found = {(f["kind"], f["path"]) for f in json.loads(out.read_text())["findings"]}
    assert ("extra", "results/extra.txt") in found
    assert ("stale", "results/a/out.txt") in found  # its input changed, and its code
    (tmp_path / "results" / "a" / "out.txt").unlink()
    audit = run_audit(tmp_path / "results")
    assert ("missing", "results/a/out.txt") in {(f.kind, f.path) for f in audit.findings}
    assert main(["audit", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


class _MeanBox:
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        p = np.clip(2 * images.reshape(len(images), -1).mean(axis=1), 0, 1)
        return np.stack([1 - p, p], axis=1)

    def predict_label(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)


@pytest.mark.parametrize("hard_label", [False, True])
def test_verdict_rederived_from_per_image_rows(tmp_path: Path, hard_label: bool) -> None:
    """A verdict re-derives from its rows; an edited row or verdict is a finding."""
    rng = np.random.default_rng(0)
    m = 30
    clean = (0.1 + 0.05 * rng.random((m, 1, 8, 8))).astype(np.float32)
    marked = clean + np.float32(0.3) * rng.random((m, 1, 1, 1)).astype(np.float32)
    decoys = np.stack([clean + np.float32(0.01 * k) for k in range(3)])
    summary, rows = verify_suspect(
        _MeanBox(),
        clean,
        marked,
        None,
        None,
        1,
        0.1,
        0.01,
        hard_label=hard_label,
        decoy_images=decoys,
        key_tau=0.1,
    )
    path = tmp_path / "results" / "v" / "summary.json"
    write_verification(summary, rows, path, path.with_name("per_image.csv"))

    def findings() -> list[str]:
        from medmark.audit import Audit

        audit = Audit(results="results")
        check_verdict(path, tmp_path, audit, None)
        assert audit.counts["verdicts"] == 1 or audit.findings
        return [f.reason for f in audit.findings]

    assert findings() == []
    table = pd.read_csv(path.with_name("per_image.csv"), dtype={"id": str})
    col = "pred_watermarked" if hard_label else "p_target_watermarked"
    table.loc[0, col] = 1 - table.loc[0, col]
    table.to_csv(path.with_name("per_image.csv"), index=False)
    assert any("re-derived from per_image.csv" in r for r in findings())
    rows.to_csv(path.with_name("per_image.csv"), index=False)
    assert findings() == []
    doc = json.loads(path.read_text())
    doc["verdict"] = "not detected" if doc["verdict"] == "detected" else "detected"
    path.write_text(json.dumps(doc))
    assert any(r.startswith("verdict is") for r in findings())
