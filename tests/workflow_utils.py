"""Checked wrappers over ``tests/slurm/workflow_helpers`` for tests that run the whole workflow."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.slurm import workflow_helpers as helpers


def copy_workflow(dest: Path) -> Path:
    """A scratch working copy of the workflow (no results/ or .snakemake/)."""
    return helpers.copy_workflow(helpers.REPO, dest, helpers.WORKFLOW_ENTRIES)


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 3600
) -> subprocess.CompletedProcess[str]:
    """Run snakemake in ``workdir`` (stdout and stderr together); fail loudly unless ``check=False``."""
    proc = helpers.run_snakemake(list(args), workdir, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}"
        )
    return proc
