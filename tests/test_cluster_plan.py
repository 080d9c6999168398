"""The CheXpert-scale plan (docs/cluster.md) and the rules' `resources:` say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from medmark.cluster import JOB_PLAN, MEASURED_PEAK_MB, WORKER_MB, planned_mem_mb, rule_resources
from tests.workflow_utils import copy_workflow, run_snakemake

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
PRESET = Path(__file__).resolve().parents[1] / "config" / "presets" / "chexpert.yaml"
WITH_LOADER = {"surrogate", "xmark_generator", "suspect", "attack_model"}  # DataLoader workers
# docs rows that share one JOB_PLAN entry
ALIAS = {
    "suspect_watermarked": "suspect",
    "suspect_clean": "suspect",
    "reference_clean": "suspect",
    "xmark_release": "release",
}


def _preset_resolutions() -> dict[str, list[int]]:
    """The image sides each planned rule holds under the CheXpert preset (docs/cluster.md)."""
    c = yaml.safe_load(PRESET.read_text())
    prep = sorted(c["preprocess"]["resolutions"])
    classifier = [c["suspects"]["resolution"]]
    out = {rule: classifier for rule in JOB_PLAN}
    return out | {
        "preprocess": prep,
        "saliency": prep,
        "release": [max(prep)],
        "surrogate": [c["surrogate"]["resolution"]],
        "xmark_generator": [c["xmark"]["resolution"]],
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
    but not in the documented plan, or the other way round; a rule documented at another image
    size than the preset gives it."""
    rows = _doc_rows()
    assert set(rows) == set(JOB_PLAN)
    resolutions = _preset_resolutions()
    for rule, plan in JOB_PLAN.items():
        runtime, mem = rows[rule]
        assert runtime == (f"{plan.runtime} x attempt" if plan.per_attempt else str(plan.runtime))
        worker = f" + {WORKER_MB} / worker" if rule in WITH_LOADER else ""
        res = resolutions[rule]
        want = (
            f"{plan.mem_mb(res[0])}"
            if len(res) == 1
            else ", ".join(f"{plan.mem_mb(r)} ({r})" for r in res)
        )
        assert mem == f"{want}{worker}", rule


def test_memory_requests_follow_the_measured_peaks() -> None:
    """mem_mb by a second route from the measured peaks (README "Scale benchmark"): 690 MB of
    imports plus the rest of the peak times the pixel ratio, x 1.5, rounded up to 100 MB,
    + 3,000 MB on a GPU, at least 2,000 MB. Breakage guarded: a plan entry pointing at
    another stage's peak, the pixel scaling dropped or inverted, the GPU term lost."""
    assert MEASURED_PEAK_MB["release"] == 3580 and MEASURED_PEAK_MB["suspect"] == 2573
    # release at 448 px: (690 + 2890 * 4) * 1.5 = 18375 -> 18400, + 3000 on the GPU
    assert JOB_PLAN["release"].mem_mb(448) == 21400
    # classifier training at 224 px: 2573 * 1.5 = 3859.5 -> 3900, + 3000
    assert JOB_PLAN["suspect"].mem_mb(224) == 6900
    # verification is a CPU job: 2045 * 1.5 = 3067.5 -> 3100
    assert JOB_PLAN["verify"].mem_mb(224) == 3100
    # at 32 px the image part is 1/49 of the measured one: (690 + 2890 / 49) * 1.5 -> 1200 + 3000
    assert JOB_PLAN["release"].mem_mb(32) == 4200
    assert JOB_PLAN["ingest"].mem_mb(448) == 2000  # the floor
    with pytest.raises(ValueError, match="resolution"):
        planned_mem_mb("verify", 0, gpu=False)


def test_rule_resources() -> None:
    r = rule_resources("suspect", threads=2, workers=6)
    assert r["mem_mb"] == JOB_PLAN["suspect"].mem_mb() + 6 * WORKER_MB
    assert (r["gpu"], r["cpus_per_gpu"]) == (1, 8)
    assert r["runtime"](None, 2) == 2 * JOB_PLAN["suspect"].runtime
    assert rule_resources("verify") == {"mem_mb": 3100, "runtime": 120}
    at = rule_resources("preprocess", resolution=lambda wc: int(wc["res"]))["mem_mb"]
    assert at({"res": "448"}) == JOB_PLAN["preprocess"].mem_mb(448)


@pytest.mark.snakemake
def test_chexpert_dry_run_shows_the_planned_resources(tmp_path: Path) -> None:
    """``snakemake --profile slurm -n`` with the CheXpert overlay: every planned job of the
    X-Mark and BadNets releases, a suspect and its verification asks for its rule's plan at its
    own image size (saliency at 224 and 448 px; releases at 448) plus its loader workers.
    Breakage guarded: a rule passing no or the wrong resolution, or a hard-coded request."""
    wf = copy_workflow(tmp_path / "wf")
    out = run_snakemake(
        wf,
        "--profile",
        "slurm",
        "-n",
        "results/main/xmark/owner/owner/owner.json",
        "results/main/badnets/owner/owner/owner.json",
        "results/main/xmark/verify/Malicious/densenet121/seed0/none/summary.json",
        "--configfile",
        "config/presets/chexpert.yaml",
    ).stdout
    preset = yaml.safe_load(PRESET.read_text())
    res = _preset_resolutions()
    workers = {
        "surrogate": preset["surrogate"]["train"]["num_workers"],
        "xmark_generator": preset["xmark"]["num_workers"],
        "suspect_watermarked": preset["suspects"]["train"]["num_workers"],
    }
    plan_of = {"suspect_watermarked": "suspect", "xmark_release": "release"}
    plan_of["method_release"] = "release"
    seen = {}
    for rule, block in re.findall(r"^rule (\w+):\n(.*?)(?:\n\n|\Z)", out, re.M | re.S):
        resources = re.search(r"resources: (.*)", block)
        if rule not in {*JOB_PLAN, *plan_of} or resources is None:
            continue
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"wildcards: (.*)", block).group(1))) if "wildcards:" in block else {}  # fmt: skip
        plan = plan_of.get(rule, rule)
        side = int(wildcards["res"]) if rule in ("preprocess", "saliency") else res[plan][0]
        want = JOB_PLAN[plan].mem_mb(side) + WORKER_MB * workers.get(rule, 0)
        assert f"mem_mb={want}," in resources.group(1), (rule, wildcards, resources.group(1))
        seen.setdefault(rule, set()).add(side)
    assert seen["saliency"] == {224, 448} and seen["preprocess"] == {224, 448}
    for rule in ("surrogate", "xmark_generator", "xmark_release", "method_release", "verify"):
        assert rule in seen, rule
    assert seen["suspect_watermarked"] == {224}
    surrogate = out[out.index("rule surrogate:") :].split("\n\n")[0]
    assert f"runtime={JOB_PLAN['surrogate'].runtime}," in surrogate
    assert "gpu=1, cpus_per_gpu=8" in surrogate
