"""Slurm settings taken from the environment (issue 6, item 1: profiles; docs/cluster.md).

The committed Slurm profile (``slurm/config.yaml``) reads the partition and the account from
``MEDMARK_SLURM_PARTITION`` and ``MEDMARK_SLURM_ACCOUNT``. A profile cannot fail with a readable
message, so the workflow checks the environment itself when it starts with the Slurm executor
(``onstart:`` in the Snakefile calls :func:`check_slurm_env`): a missing account is an error that
says what to set, never a silent submission under a guessed account.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
