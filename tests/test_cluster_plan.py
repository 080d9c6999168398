"""The CheXpert-scale plan (docs/cluster.md) and the rules' `resources:` say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medmark.cluster import JOB_PLAN, WORKER_MB, rule_resources
from tests.workflow_utils import copy_workflow, run_snakemake

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
WITH_LOADER = {"surrogate", "xmark_generator", "suspect", "attack_model"}  # DataLoader workers
# docs rows that share one JOB_PLAN entry
ALIAS = {
    "suspect_watermarked": "suspect",
    "suspect_clean": "suspect",
    "reference_clean": "suspect",
}


def _doc_rows() -> dict[str, tuple[str, str]]:
    """``rule -> (runtime cell, mem_mb cell)`` of the plan table."""
    text = DOC.read_text()
    table = text[text.index("| rule | jobs | on |") :].split("\n\n")[0].splitlines()[2:]
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rule = re.match(r"[a-z_]+", cells[0]).group(0)  # type: ignore[union-attr]
        rows[ALIAS.get(rule, rule)] = (cells[4], cells[5])
    return rows


def test_plan_table_matches_job_plan() -> None:
    """Breakage guarded: a request changed in medmark.cluster.JOB_PLAN (what the rules submit)
    but not in the documented plan, or the other way round."""
    rows = _doc_rows()
    assert set(rows) == set(JOB_PLAN)
    for rule, plan in JOB_PLAN.items():
        runtime, mem = rows[rule]
        assert runtime == (f"{plan.runtime} x attempt" if plan.per_attempt else str(plan.runtime))
        worker = f" + {WORKER_MB} / worker" if rule in WITH_LOADER else ""
        assert mem == f"{plan.mem_mb}{worker}", rule


def test_rule_resources() -> None:
    r = rule_resources("suspect", threads=2, workers=6)
    assert r["mem_mb"] == JOB_PLAN["suspect"].mem_mb + 6 * WORKER_MB
    assert (r["gpu"], r["cpus_per_gpu"]) == (1, 8)
    assert r["runtime"](None, 2) == 2 * JOB_PLAN["suspect"].runtime
    assert rule_resources("verify") == {"mem_mb": 2000, "runtime": 120}


@pytest.mark.snakemake
def test_chexpert_dry_run_shows_the_planned_resources(tmp_path: Path) -> None:
    """``snakemake --profile slurm -n`` with the CheXpert overlay submits what the plan says."""
    wf = copy_workflow(tmp_path / "wf")
    out = run_snakemake(
        wf,
        "--profile",
        "slurm",
        "-n",
        "results/surrogate/resnet18_r224/model.pt",
        "--configfile",
        "config/presets/chexpert.yaml",
    ).stdout
    want = rule_resources("surrogate", threads=2, workers=6)
    block = out[out.index("rule surrogate:") :]
    resources = re.search(r"resources: (.*)", block).group(1)  # type: ignore[union-attr]
    assert f"mem_mb={want['mem_mb']}," in resources
    assert f"runtime={JOB_PLAN['surrogate'].runtime}," in resources
    assert "gpu=1, cpus_per_gpu=8" in resources
    prep = out[out.index("rule preprocess:") :]
    assert f"mem_mb={JOB_PLAN['preprocess'].mem_mb}," in prep.split("\n\n")[0]
