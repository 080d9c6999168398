"""The cluster path's checks (docs/cluster.md): Slurm settings from the environment
(item 1) and safe keys for between-workflow caching (item 3).

The committed Slurm profile (``slurm/config.yaml``) reads the partition and the account from
``MEDMARK_SLURM_PARTITION`` and ``MEDMARK_SLURM_ACCOUNT``. A profile cannot fail with a readable
message, so the workflow checks the environment itself when it starts with the Slurm executor
(``onstart:`` in the Snakefile calls :func:`check_slurm_env`): a missing account is an error that
says what to set, never a silent submission under a guessed account.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARTITION_VAR = "MEDMARK_SLURM_PARTITION"
ACCOUNT_VAR = "MEDMARK_SLURM_ACCOUNT"
NO_ACCOUNT = "none"
"""Value of ``MEDMARK_SLURM_ACCOUNT`` for clusters that do not use accounts (submit without -A)."""

SLURM_EXECUTOR = "slurm"


class ClusterConfigError(RuntimeError):
    """The environment does not say where to submit Slurm jobs."""


@dataclass(frozen=True)
class SlurmEnv:
    """Where jobs go: ``partition`` None = the cluster's default partition; ``account`` None =
    no ``-A`` (the user set ``MEDMARK_SLURM_ACCOUNT=none``)."""

    partition: str | None
    account: str | None


def slurm_env(environ: Mapping[str, str] | None = None) -> SlurmEnv:
    """Read partition and account from ``environ`` (default ``os.environ``).

    Raises :class:`ClusterConfigError` when the account variable is unset or empty.
    """
    env = os.environ if environ is None else environ
    partition = env.get(PARTITION_VAR, "").strip() or None
    account = env.get(ACCOUNT_VAR, "").strip()
    if not account:
        raise ClusterConfigError(_ACCOUNT_HELP)
    return SlurmEnv(partition=partition, account=None if account == NO_ACCOUNT else account)


_ACCOUNT_HELP = (
    f"{ACCOUNT_VAR} is not set. The Slurm profile submits every job under this account: "
    f"`export {ACCOUNT_VAR}=<your account>` (list yours with "
    "`sacctmgr -n show assoc user=$USER format=account`), or "
    f"`export {ACCOUNT_VAR}={NO_ACCOUNT}` on a cluster without accounts. "
    f"Optionally `export {PARTITION_VAR}=<partition>` (default: the cluster's default "
    "partition)."
)
_SBATCH_HELP = (
    "The Slurm executor is selected (`--profile slurm`) but `sbatch` is not on PATH: run "
    "Snakemake on the cluster's login node, or run locally with `snakemake --cores N all`."
)


def check_slurm_env(
    executor: str | None,
    environ: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> SlurmEnv | None:
    """Fail early with a clear message when ``executor`` is Slurm but this machine or the
    environment cannot submit jobs (no ``sbatch`` on PATH, no account configured).

    Called from the Snakefile's ``onstart:`` with ``workflow.executor_plugin.name``. Any other
    executor (local, the ``slurm-jobstep`` inside a job) needs nothing and returns None; a dry
    run (``-n``) never reaches ``onstart`` and prints its plan on any machine.
    """
    if executor != SLURM_EXECUTOR:
        return None
    problems = []
    if which("sbatch") is None:
        problems.append(_SBATCH_HELP)
    try:
        env = slurm_env(environ)
    except ClusterConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ClusterConfigError(" ".join(problems) + " See docs/cluster.md.")
    return env


# --- between-workflow caching -------------------------------------------------------------------


class CacheKeyError(ValueError):
    """A cache-eligible rule whose cache key would not tell its jobs apart."""


def cache_collisions(keyed_jobs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Groups (sorted) of job labels that share one cache key; ``keyed_jobs`` = (key, label)."""
    groups: dict[str, set[str]] = {}
    for key, label in keyed_jobs:
        groups.setdefault(key, set()).add(label)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def check_cache_collisions(workflow: Any) -> None:
    """Refuse to run when two jobs eligible for between-workflow caching share a cache key.

    Snakemake's provenance hash (``snakemake/caching/hash.py``, hash version 0.1, measured with
    snakemake 9.27.1) covers a rule's code, its params, the checksums of source inputs, the
    hashes of upstream jobs and (unless ``omit-software``) the software environment, but NOT
    the wildcard values. Two jobs of one cached rule that differ only in a wildcard (e.g.
    ``r{res}.h5`` from the same upstream files, with ``res`` in no param) get the same key, and
    the second silently receives the first one's output from the cache. Call from the
    Snakefile's ``onstart:`` (it runs after the DAG is built; a no-op without ``--cache``). The
    fix is a param carrying the wildcard, e.g. ``params: res=lambda wc: int(wc.res)``.
    """
    if not workflow.enable_cache:
        return
    from snakemake.caching.hash import ProvenanceHashMap

    jobs = [j for j in workflow.dag.jobs if j.rule.cache is not None and j.rule.cache.output]
    hash_map = ProvenanceHashMap()

    async def keys() -> list[str]:
        return [await hash_map.get_provenance_hash(job) for job in jobs]

    labels = [
        f"{job.rule.name}[{', '.join(f'{k}={v}' for k, v in job.wildcards.items())}]"
        for job in jobs
    ]
    groups = cache_collisions(zip(workflow.async_run(keys()), labels, strict=True))
    if groups:
        raise CacheKeyError(
            "Between-workflow caching would hand one output to several jobs (Snakemake's cache "
            "key ignores wildcard values): "
            + "; ".join(" = ".join(g) for g in groups)
            + ". Add each distinguishing wildcard as a param, e.g. "
            "`params: res=lambda wc: int(wc.res)`."
        )


def package_source_hash(package_dir: str | os.PathLike[str] | None = None) -> str:
    """sha256 over the ``.py`` files of the ``medmark`` package (relative path + content).

    Snakemake's cache hash covers a rule's script but not the library it imports: pass this as
    a param of every cached rule so a change in ``src/medmark`` invalidates cached outputs.
    """
    root = Path(package_dir) if package_dir is not None else Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- resources


#: Peak RSS (MB) of each stage as a whole process, measured by ``benchmarks/scale.py`` on two CPU
#: cores with images of :data:`MEASURED_RESOLUTION` px and the embedded default's batch sizes: the
#: larger of N = 1,000 and N = 4,000 (README "Scale benchmark"; flat in N, every ratio <= 1.11).
MEASURED_PEAK_MB: dict[str, int] = {
    "ingest": 690,
    "preprocess": 705,
    "saliency": 1460,
    "generator": 5171,
    "release": 3580,
    "suspect": 2573,
    "verify": 2045,
}
MEASURED_RESOLUTION = 224
BASE_MB = 690
"""A process with torch and the package imported and no images held (ingest's measured peak):
the part of a peak that does not grow with the image size."""
MARGIN = 1.5
CUDA_MB = 3000
"""Host memory of the CUDA runtime and cuDNN's workspaces in a GPU job (assumed, not measured)."""
MIN_MB = 2000


def planned_mem_mb(stage: str, resolution: int, gpu: bool) -> int:
    """``mem_mb`` of a job of ``stage`` holding images of side ``resolution`` (docs/cluster.md).

    The measured peak's part above :data:`BASE_MB` scales with the pixels per image
    ``(resolution / MEASURED_RESOLUTION)**2`` (batches and blocks have a fixed number of images,
    so nothing scales with N); times :data:`MARGIN`, rounded up to 100 MB, plus :data:`CUDA_MB`
    on GPU rules; at least :data:`MIN_MB`.
    """
    if resolution < 1:
        raise ValueError(f"{stage}: resolution must be >= 1, got {resolution}")
    scale = (resolution / MEASURED_RESOLUTION) ** 2
    grown = BASE_MB + max(MEASURED_PEAK_MB[stage] - BASE_MB, 0) * scale
    mb = math.ceil(grown * MARGIN / 100) * 100 + (CUDA_MB if gpu else 0)
    return max(mb, MIN_MB)


@dataclass(frozen=True)
class JobPlan:
    """One rule's Slurm request, from the CheXpert-scale plan (docs/cluster.md).

    ``measured``: the stage of :data:`MEASURED_PEAK_MB` whose peak sets ``mem_mb``
    (:func:`planned_mem_mb` at the job's image size); each DataLoader worker adds
    :data:`WORKER_MB`. ``runtime``: minutes for the first attempt, from the measured per-image
    times and the models' FLOP counts at CheXpert size; ``per_attempt`` rules (training) ask
    for ``runtime * attempt`` on their retries. A GPU rule asks for one GPU and
    ``cpus_per_gpu`` = its torch threads + its loader workers.
    """

    measured: str
    runtime: int
    gpu: bool = False
    per_attempt: bool = False

    def mem_mb(self, resolution: int = MEASURED_RESOLUTION) -> int:
        return planned_mem_mb(self.measured, resolution, self.gpu)


WORKER_MB = 500  # one DataLoader worker process (torch imported, one batch in flight)

JOB_PLAN: dict[str, JobPlan] = {
    "ingest": JobPlan("ingest", runtime=60),
    "preprocess": JobPlan("preprocess", runtime=120),
    "surrogate": JobPlan("suspect", runtime=60, gpu=True, per_attempt=True),
    "saliency": JobPlan("saliency", runtime=120, gpu=True),
    "xmark_generator": JobPlan("generator", runtime=60, gpu=True, per_attempt=True),
    "release": JobPlan("release", runtime=90, gpu=True),
    "suspect": JobPlan("suspect", runtime=120, gpu=True, per_attempt=True),
    "attack_model": JobPlan("suspect", runtime=120, gpu=True, per_attempt=True),
    "verify": JobPlan("verify", runtime=120),
    "xmark_diagnostics": JobPlan("verify", runtime=60),
}
"""Per-rule requests; ``suspect`` serves every classifier-training rule (suspects, clean
references, the release proxy), ``release`` every method's release rule. docs/cluster.md's plan
table shows the same values at the CheXpert preset's image sizes (tested)."""


def _times_attempt(minutes: int) -> Callable[[Any, int], int]:
    def runtime(wildcards: Any, attempt: int) -> int:
        return minutes * attempt

    return runtime


def rule_resources(
    rule: str,
    threads: int = 1,
    workers: int = 0,
    resolution: int | Callable[[Any], int] = MEASURED_RESOLUTION,
) -> dict[str, Any]:
    """The ``resources:`` of ``rule`` (a key of :data:`JOB_PLAN`) whose job runs ``threads``
    torch threads and ``workers`` DataLoader worker processes on images of side ``resolution``
    (a number, or a function of the job's wildcards)."""
    plan = JOB_PLAN[rule]
    extra = WORKER_MB * workers
    mem: int | Callable[[Any], int]
    if callable(resolution):
        res_of = resolution

        def mem(wildcards: Any) -> int:
            return plan.mem_mb(int(res_of(wildcards))) + extra

    else:
        mem = plan.mem_mb(resolution) + extra
    out: dict[str, Any] = {
        "mem_mb": mem,
        "runtime": _times_attempt(plan.runtime) if plan.per_attempt else plan.runtime,
    }
    if plan.gpu:
        out |= {"gpu": 1, "cpus_per_gpu": threads + workers}
    return out
