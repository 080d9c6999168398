"""``medmark audit`` on a real tiny-preset run (README: "Auditing results/").

One run of ``all`` (session fixture) and one short run of ``results/data/splits.csv`` under
another config; each test audits a hard-linked copy of the tree after one tampering (files are
replaced, never edited in place, so the shared run stays untouched) and checks that the audit
names the path and the reason, with exit status 1; the untouched copy audits clean (0).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from medmark.cli import main
from tests.workflow_utils import copy_workflow, run_snakemake

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.snakemake]
TINY = "config/presets/tiny.yaml"
OTHER = "config/presets/other_split.yaml"
SUSPECT = "results/main/xmark/suspects/Malicious/resnet18/seed0/model.pt"
VERIFY = "results/main/xmark/verify/Malicious/resnet18/seed0/none"
RELEASE = "results/main/xmark/owner/release"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wf = copy_workflow(tmp_path_factory.mktemp("audit_tiny"))
    run_snakemake(wf, "--cores", "2", "all", "--configfile", TINY)
    return wf


@pytest.fixture(scope="session")
def other_config_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data stage of the tiny preset with another split seed."""
    wf = copy_workflow(tmp_path_factory.mktemp("audit_other"))
    (wf / OTHER).write_text("data:\n  split_seed: 7\n")
    run_snakemake(
        wf, "--cores", "2", "results/data/splits.csv", "--configfile", TINY, OTHER, timeout=600
    )
    return wf


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` without touching the hard-linked original."""
    path.unlink()
    path.write_bytes(data)


def _audit(
    tmp_path: Path, run: Path, tamper: Callable[[Path], None] | None = None
) -> tuple[int, dict]:
    work = tmp_path / "w"
    for name in ("results", "src", "scripts", "config"):
        shutil.copytree(run / name, work / name, symlinks=True, copy_function=os.link)
    if tamper is not None:
        tamper(work)
    out = tmp_path / "audit.json"
    code = main(["audit", str(work / "results"), "--out", str(out), "--quiet", "--limit", "5"])
    return code, json.loads(out.read_text())


def _found(audit: dict, kind: str, path: str, reason: str = "") -> bool:
    return any(
        f["kind"] == kind and f["path"] == path and reason in f["reason"] for f in audit["findings"]
    )


def test_untouched_run_audits_clean(tmp_path: Path, tiny_run: Path) -> None:
    code, audit = _audit(tmp_path, tiny_run)
    assert code == 0 and audit["clean"], audit["findings"][:10]
    checked = audit["checked"]
    assert checked["records"] > 20 and checked["verdicts"] >= 5 and checked["releases"] >= 3
    # the report's provenance page: per table the job's commit and config hash, the inputs'
    # manifest entries, and the pipeline's own audit of the finished tree (clean)
    page = (tiny_run / "results/report/provenance.md").read_text()
    assert "### `results/main/report/verification.md`" in page
    assert "config hash `" in page and "not a git checkout" in page
    assert f"| `{VERIFY}/summary.json` |" in page and "| same |" in page
    assert json.loads((tiny_run / "results/report/audit.json").read_text())["clean"]


def test_flipped_byte_in_suspect_weights(tmp_path: Path, tiny_run: Path) -> None:
    def flip(w: Path) -> None:
        data = bytearray((w / SUSPECT).read_bytes())
        data[len(data) // 2] ^= 0xFF
        _replace(w / SUSPECT, bytes(data))

    code, audit = _audit(tmp_path, tiny_run, flip)
    assert code == 1
    assert _found(audit, "changed", SUSPECT, "sha256 differs from the record")
    assert _found(audit, "stale", f"{VERIFY}/per_image.csv", f"input {SUSPECT} changed")


def test_edited_summary_verdict(tmp_path: Path, tiny_run: Path) -> None:
    path = f"{VERIFY}/summary.json"

    def edit(w: Path) -> None:
        doc = json.loads((w / path).read_text())
        doc["verdict"] = "not detected" if doc["verdict"] == "detected" else "detected"
        _replace(w / path, json.dumps(doc, indent=2).encode())

    code, audit = _audit(tmp_path, tiny_run, edit)
    assert code == 1
    assert _found(audit, "changed", path)
    assert _found(audit, "verdict", path, "re-derived from per_image.csv")


def test_edited_per_image_row(tmp_path: Path, tiny_run: Path) -> None:
    csv = f"{VERIFY}/per_image.csv"

    def edit(w: Path) -> None:
        table = pd.read_csv(w / csv, dtype={"id": str})
        table.loc[0, "p_target_watermarked"] = 1.0 - table.loc[0, "p_target_watermarked"]
        (w / csv).unlink()
        table.to_csv(w / csv, index=False)

    code, audit = _audit(tmp_path, tiny_run, edit)
    assert code == 1
    assert _found(audit, "changed", csv)
    assert _found(audit, "verdict", f"{VERIFY}/summary.json", "p_value is")


def test_deleted_output(tmp_path: Path, tiny_run: Path) -> None:
    gone = "results/main/report/pvalues.png"
    code, audit = _audit(tmp_path, tiny_run, lambda w: (w / gone).unlink())
    assert code == 1
    assert _found(audit, "missing", gone, "recorded output is missing")


def test_file_from_a_run_with_another_config(
    tmp_path: Path, tiny_run: Path, other_config_run: Path
) -> None:
    """The file alone: changed. The file with its record: stale (other config files, other
    config hash), and the jobs that read the original are stale."""
    splits = "results/data/splits.csv"
    (record,) = (other_config_run / "results/provenance/splits").glob("*.json")

    def copy_file(w: Path) -> None:
        _replace(w / splits, (other_config_run / splits).read_bytes())

    code, audit = _audit(tmp_path / "a", tiny_run, copy_file)
    assert code == 1 and _found(audit, "changed", splits)

    def copy_with_record(w: Path) -> None:
        copy_file(w)
        _replace(w / "results/provenance/splits" / record.name, record.read_bytes())

    code, audit = _audit(tmp_path / "b", tiny_run, copy_with_record)
    assert code == 1
    assert not _found(audit, "changed", splits)
    assert _found(audit, "stale", splits, f"config file {OTHER} differs")
    assert _found(audit, "stale", splits, "produced under config hash")
    assert _found(audit, "stale", "results/prep/r32.h5", f"input {splits} changed")


def test_generator_weights_planted_under_release(tmp_path: Path, tiny_run: Path) -> None:
    owner = json.loads((tiny_run / RELEASE / "../owner/owner.json").resolve().read_text())
    key = owner["key"]
    planted = f"{RELEASE}/generator.pt"

    def plant(w: Path) -> None:
        shutil.copy(w / f"results/main/xmark/key{key}/generator/model.pt", w / planted)

    code, audit = _audit(tmp_path, tiny_run, plant)
    assert code == 1
    assert _found(audit, "secret", planted, "same bytes as the owner's")
    assert _found(audit, "secret", planted, "a model/weights file inside release/")
    assert _found(audit, "extra", planted)
