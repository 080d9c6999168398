"""The cluster path (docs/cluster.md).

Fast tests (no daemons): the literal ``--profile slurm`` resolves to the committed ``slurm/``
profile, the local workflow profile does not fight it, a dry run on a machine without Slurm
prints the plan, and :mod:`medmark.cluster` stops a real run with a clear message.

Slurm tests (``slurm``, ``slow``): a real one-node Slurm started by
``tests/slurm/start-local-slurm.sh`` runs the toy workflow and the tiny preset through
``snakemake --profile slurm``; the evidence (Slurm job ids, per-job Slurm logs, the GPU gres
Slurm allocated) is printed and asserted, and the outputs must equal a local run's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from workflow_helpers import (  # noqa: E402
    REPO,
    SNAKEMAKE,
    TOY,
    WORKFLOW_ENTRIES,
    check_snakemake_allowed,
    compare_trees,
    copy_workflow,
    rule_headers,
    run_snakemake,
    submissions,
)

from medmark.cluster import (  # noqa: E402
    ACCOUNT_VAR,
    NO_ACCOUNT,
    PARTITION_VAR,
    ClusterConfigError,
    SlurmEnv,
    check_slurm_env,
    slurm_env,
)

START = REPO / "tests" / "slurm" / "start-local-slurm.sh"
STOP = REPO / "tests" / "slurm" / "stop-local-slurm.sh"
CANNOT_RUN_DAEMONS = 77
SLURM_TARGETS = [
    "data_all",
    "results/saliency/resnet18_r32/r32.h5",
    "results/main/xmark/suspects/Malicious/resnet18/seed0/model.pt",
]
"""Targets of the real pipeline run both locally and through Slurm: ingest + preprocess, the
surrogate and its saliency, the X-Mark generator and release, one Malicious suspect."""
GPU_RULES = frozenset(
    ["surrogate", "saliency", "xmark_generator", "xmark_release", "suspect_watermarked"]
)
"""Rules of those targets that declare ``gpu=1`` (rules/*.smk): Slurm must allocate them a GPU."""
TINY_PRESET = "config/presets/tiny.yaml"
TOY_EXPECTED_SUMMARY = "1\n1\n4\n1\n4\n9\n"


def _show(config: pytest.Config, text: str) -> None:
    """Print to the terminal although pytest captures output: CI logs must carry the evidence."""
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(text, flush=True)


def _slurm_evidence(title: str, elapsed: float, log: str) -> str:
    lines = re.findall(r"^Job \d+ has been submitted with SLURM jobid.*$", log, re.MULTILINE)
    return "\n".join([f"\n{title}: {elapsed:.1f} s, {len(lines)} sbatch submissions", *lines])


def _toy_copy(dst: Path) -> Path:
    """The toy workflow with the repository's two profiles, as a user's checkout has them."""
    copy_workflow(TOY, dst, ["Snakefile"])
    return copy_workflow(REPO, dst, ["slurm", "profiles"])


# --- medmark.cluster ----------------------------------------------------------------------------


def test_slurm_env_reads_partition_and_account() -> None:
    env = {PARTITION_VAR: " gpu ", ACCOUNT_VAR: "proj42"}
    assert slurm_env(env) == SlurmEnv(partition="gpu", account="proj42")
    assert slurm_env({ACCOUNT_VAR: NO_ACCOUNT}) == SlurmEnv(partition=None, account=None)


@pytest.mark.parametrize("env", [{}, {ACCOUNT_VAR: "  "}, {PARTITION_VAR: "gpu"}])
def test_slurm_env_requires_account(env: dict[str, str]) -> None:
    with pytest.raises(ClusterConfigError, match=f"{ACCOUNT_VAR} is not set.*export"):
        slurm_env(env)


def test_check_slurm_env_only_for_slurm_executor() -> None:
    def no_sbatch(name: str) -> None:
        return None

    for executor in ("local", "slurm-jobstep", "dryrun", None):
        assert check_slurm_env(executor, {}, which=no_sbatch) is None
    with pytest.raises(ClusterConfigError, match="sbatch` is not on PATH.*is not set"):
        check_slurm_env("slurm", {}, which=no_sbatch)
    ok = check_slurm_env("slurm", {ACCOUNT_VAR: "a"}, which=lambda name: f"/usr/bin/{name}")
    assert ok == SlurmEnv(partition=None, account="a")


# --- profiles -----------------------------------------------------------------------------------


def test_profile_keys_do_not_fight() -> None:
    """profiles/default/ is applied under --profile slurm too and wins: shared keys must agree."""
    slurm = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    local = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    shared = set(slurm) & set(local)
    assert {k: local[k] for k in shared} == {k: slurm[k] for k in shared}
    assert not {"executor", "jobs", "retries", "latency-wait"} & set(local)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({PARTITION_VAR: "gpu", ACCOUNT_VAR: "proj42"}, {"gpu", "proj42"}),
        ({ACCOUNT_VAR: NO_ACCOUNT}, set()),
        ({}, set()),
    ],
)
def test_literal_profile_name_resolves(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    expected: set[str],
) -> None:
    """``snakemake --profile slurm`` from the repository root: the committed slurm/ profile plus
    the automatic workflow profile, with partition/account from the environment."""
    from snakemake.cli import parse_args, parse_cores

    _toy_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    for var in (PARTITION_VAR, ACCOUNT_VAR):
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    _, args = parse_args(["--profile", "slurm", "all"])
    assert args.executor == "slurm"
    assert (args.jobs, args.retries, args.latency_wait) == (50, 2, 60)
    assert args.rerun_incomplete and args.printshellcmds and args.show_failed_logs
    assert args.slurm_status_command == "squeue"
    assert args.slurm_init_seconds_before_status_checks == 5
    assert args.cores == parse_cores("all")  # from profiles/default, the workflow profile
    resources = dict(r.split("=", 1) for r in args.default_resources.args)
    assert {"runtime", "mem_mb"} <= set(resources)
    slurm_values = {
        resources[k].strip("'") for k in ("slurm_partition", "slurm_account") if k in resources
    }
    assert slurm_values == expected


SLURM_TOOLS = frozenset(
    [
        "sbatch",
        "srun",
        "salloc",
        "scancel",
        "sinfo",
        "squeue",
        "sacct",
        "sacctmgr",
        "scontrol",
        "sshare",
        "sstat",
        "sprio",
    ]
)


def _path_without_slurm(tmp_path: Path) -> str:
    """A PATH with this machine's tools except Slurm's (a login node without Slurm)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in map(Path, os.environ.get("PATH", "").split(os.pathsep)):
        if not directory.is_dir():
            continue
        for tool in directory.iterdir():
            name = tool.name
            if name in SLURM_TOOLS or name.startswith("slurm") or (bin_dir / name).exists():
                continue
            if tool.is_file() and os.access(tool, os.X_OK):
                (bin_dir / name).symlink_to(tool)
    path = str(bin_dir)
    assert shutil.which("bash", path=path) and not shutil.which("sinfo", path=path)
    return path


@pytest.mark.snakemake
def test_dry_run_without_slurm_prints_plan(tmp_path: Path) -> None:
    """The cluster path's promise (docs/cluster.md): ``snakemake --profile slurm -n all`` without Slurm prints the
    plan, not a traceback (no account set either: a dry run submits nothing)."""
    work = _toy_copy(tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if k not in (PARTITION_VAR, ACCOUNT_VAR)}
    env["PATH"] = _path_without_slurm(tmp_path)
    check_snakemake_allowed()
    proc = subprocess.run(
        [str(SNAKEMAKE), "--profile", "slurm", "-n", "all"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "Using profiles slurm and workflow specific profile profiles/default" in out
    assert re.search(r"gpu_square\s+3\n", out) and re.search(r"total\s+8\n", out), out
    assert "This was a dry-run" in out


@pytest.mark.snakemake
def test_real_run_without_slurm_says_why(tmp_path: Path) -> None:
    """Without sbatch and without an account, a real run stops in onstart with both reasons."""
    work = _toy_copy(tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if k not in (PARTITION_VAR, ACCOUNT_VAR)}
    env["PATH"] = _path_without_slurm(tmp_path)
    check_snakemake_allowed()
    proc = subprocess.run(
        [str(SNAKEMAKE), "--profile", "slurm", "all"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out
    assert "ClusterConfigError" in out and "`sbatch` is not on PATH" in out, out
    assert f"{ACCOUNT_VAR} is not set" in out
    assert not (work / "results").exists()


# --- a real Slurm -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def local_slurm(pytestconfig: pytest.Config) -> Iterator[dict[str, str]]:
    """Start the one-node Slurm (or reuse one the start script already started) and stop, by
    PID, the daemons this session started. Under ``CI=true`` any failure to start fails the
    tests, exit 77 (this machine cannot run the daemons) included; elsewhere exit 77 skips with
    the script's reason and any other failure skips with the full output."""
    state = Path(os.environ.get("MEDMARK_SLURM_STATE", "/tmp/medmark-slurm"))
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(START)], capture_output=True, text=True, timeout=900, check=False
    )
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    _show(pytestconfig, f"\n{START.name} exited {proc.returncode} after {elapsed:.1f} s:\n{out}")
    if proc.returncode != 0:
        message = f"{START.name} failed (exit {proc.returncode}):\n{out}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)  # CI must run the cluster path: no silent skip, not even 77
        if proc.returncode == CANNOT_RUN_DAEMONS:
            pytest.skip(f"local Slurm: {out.strip()}")
        pytest.skip(message)
    started_here = "already running" not in proc.stdout
    info = dict(
        line.split("=", 1) for line in (state / "env").read_text().splitlines() if "=" in line
    )
    try:
        yield info
    finally:
        if started_here:
            stop = subprocess.run(
                ["bash", str(STOP)], capture_output=True, text=True, timeout=120, check=False
            )
            _show(
                pytestconfig, f"\n{STOP.name} exited {stop.returncode}:\n{stop.stdout}{stop.stderr}"
            )


def _slurm_env(info: dict[str, str]) -> dict[str, str]:
    # accounting_storage/none: the plugin cannot validate an account (sacctmgr has no
    # database), so the local cluster runs as a cluster without accounts.
    return {PARTITION_VAR: info["MEDMARK_SLURM_PARTITION"], ACCOUNT_VAR: NO_ACCOUNT}


def _scontrol_job(job_id: int) -> str:
    return subprocess.run(
        ["scontrol", "show", "job", str(job_id)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.snakemake
def test_toy_workflow_through_slurm(
    local_slurm: dict[str, str], tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """Every non-local toy job goes through sbatch (job ids, per-job Slurm logs, scontrol shows
    the GPU gres on the GPU rule only); the localrule runs in Snakemake; outputs = local run."""
    work = _toy_copy(tmp_path / "slurm")
    t0 = time.monotonic()
    proc = run_snakemake(
        ["--profile", "slurm", "all"], work, env=_slurm_env(local_slurm), timeout=600
    )
    elapsed = time.monotonic() - t0
    log = proc.stdout
    assert proc.returncode == 0, log
    subs = submissions(log)
    _show(pytestconfig, _slurm_evidence("toy workflow through Slurm", elapsed, log))

    headers = rule_headers(log)
    assert sorted(r for local, r in headers if not local) == ["gpu_square"] * 3 + ["numbers"] * 3
    assert sorted(r for local, r in headers if local) == ["all", "summarize"]
    assert len(subs) == 6
    by_rule: dict[str, list[int]] = {}
    for _, slurm_id, slurm_log in subs:
        assert slurm_log.is_file(), f"Slurm log {slurm_log} missing"
        assert slurm_log.is_relative_to(work / ".snakemake" / "slurm_logs")
        rule = slurm_log.parts[-3].removeprefix("rule_")
        assert f"rule {rule}:" in slurm_log.read_text()  # the job step's own Snakemake log
        by_rule.setdefault(rule, []).append(slurm_id)
    assert sorted(by_rule) == ["gpu_square", "numbers"]

    for slurm_id in by_rule["gpu_square"]:
        job = _scontrol_job(slurm_id)
        tres = " ".join(re.findall(r"\S*Tres\S*", job))
        _show(pytestconfig, f"scontrol show job {slurm_id} (gpu_square): {tres}")
        assert "TresPerJob=gres:gpu:1" in job and "JobState=COMPLETED" in job, job
        assert f"Partition={local_slurm['MEDMARK_SLURM_PARTITION']}" in job
    for slurm_id in by_rule["numbers"]:
        job = _scontrol_job(slurm_id)
        assert "gres:gpu" not in job and "JobState=COMPLETED" in job, job
    gpu_logs = {p.read_text().strip() for p in (work / "results/logs/gpu_square").glob("*.log")}
    assert gpu_logs == {f"SLURM_JOB_ID={i} GPUS_ON_NODE=1" for i in by_rule["gpu_square"]}
    assert (work / "results/logs/summarize.log").read_text().strip() == "SLURM_JOB_ID=none"
    assert (work / "results/summary.txt").read_text() == TOY_EXPECTED_SUMMARY

    local = _toy_copy(tmp_path / "local")
    local_proc = run_snakemake(["--cores", "2", "all"], local, timeout=300)
    assert local_proc.returncode == 0, local_proc.stdout
    assert compare_trees(local / "results", work / "results") == []


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.snakemake
def test_tiny_preset_through_slurm_equals_local(
    local_slurm: dict[str, str], tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """The tiny preset through ``snakemake --profile slurm`` against the local
    Slurm; every non-local job went through sbatch, outputs equal a local run's.

    The surrogate, saliency, generator, release and suspect jobs were each allocated
    ``gres:gpu:1`` by Slurm (``scontrol show job``), the CPU jobs none. Breakage guarded: a GPU
    rule losing its ``gpu=1`` resource (or the profile dropping it), which the toy workflow's
    assertion alone would not notice."""
    missing = [e for e in (*WORKFLOW_ENTRIES, TINY_PRESET) if not (REPO / e).exists()]
    assert not missing, f"the pipeline is not complete yet: missing {missing}"
    preset = [*SLURM_TARGETS, "--configfile", TINY_PRESET]  # targets first: nargs="+"

    # One checkout, two executors: the local run's results/ is set aside, then the same
    # directory runs through Slurm (paths recorded in provenance files are then identical).
    work = copy_workflow(REPO, tmp_path / "checkout", WORKFLOW_ENTRIES)
    local_proc = run_snakemake(["--cores", "2", *preset], work, timeout=1800)
    assert local_proc.returncode == 0, local_proc.stdout
    (work / "results").rename(work / "results.local")
    shutil.rmtree(work / ".snakemake")

    t0 = time.monotonic()
    proc = run_snakemake(
        ["--profile", "slurm", *preset], work, env=_slurm_env(local_slurm), timeout=1800
    )
    elapsed = time.monotonic() - t0
    log = proc.stdout
    assert proc.returncode == 0, log
    subs = submissions(log)
    _show(pytestconfig, _slurm_evidence("tiny preset through Slurm", elapsed, log))
    remote_jobs = [rule for local_rule, rule in rule_headers(log) if not local_rule]
    assert remote_jobs, "no job ran through Slurm"
    assert len(subs) == len(remote_jobs)
    by_rule: dict[str, list[int]] = {}
    for _, slurm_id, slurm_log in subs:
        assert slurm_log.is_file(), f"Slurm log {slurm_log} missing"
        by_rule.setdefault(slurm_log.parts[-3].removeprefix("rule_"), []).append(slurm_id)
    assert set(by_rule) >= GPU_RULES, sorted(by_rule)
    for rule, ids in sorted(by_rule.items()):
        for slurm_id in ids:
            job = _scontrol_job(slurm_id)
            tres = " ".join(re.findall(r"\S*Tres\S*", job))
            _show(pytestconfig, f"scontrol show job {slurm_id} ({rule}): {tres}")
            assert "JobState=COMPLETED" in job, job
            if rule in GPU_RULES:
                assert "TresPerJob=gres:gpu:1" in job, f"{rule}: no GPU allocated\n{job}"
            else:
                assert "gres:gpu" not in job, f"{rule}: a CPU job got a GPU\n{job}"
    assert compare_trees(work / "results.local", work / "results") == []
