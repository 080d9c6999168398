"""The layered test suite: `make test` is the fast layer, `make test-all` everything (CI)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib

import pytest

from tests.slurm.workflow_helpers import REPO, check_snakemake_allowed


def test_unmarked_test_may_not_start_snakemake() -> None:
    """A test without the ``snakemake`` marker that starts Snakemake fails at once."""
    with pytest.raises(AssertionError, match=r"mark it @pytest.mark.snakemake"):
        check_snakemake_allowed()


@pytest.mark.snakemake
def test_marked_test_may_start_snakemake() -> None:
    check_snakemake_allowed()


def test_make_targets_and_ci_select_the_layers() -> None:
    """`make test` deselects the heavy tests, `make test-all` and .ci/run run everything.

    Before the change `make test` ran the whole 36-minute suite and the markers did not exist.
    """
    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"][
        "markers"
    ]
    assert {m.split(":")[0] for m in markers} >= {"slow", "slurm", "snakemake", "heavy"}
    make = (REPO / "Makefile").read_text()
    assert re.search(r'^test: .*\n\t\$\(VENV\)/bin/pytest -m "not heavy"$', make, re.M)
    assert re.search(r"^test-all: .*\n\t\$\(VENV\)/bin/pytest$", make, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert "make lint" in ci and "make test-all" in ci


def test_no_run_artifacts_are_tracked() -> None:
    """No ``.snakemake/`` folder is committed (tests/slurm/toy/.snakemake/ was)."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if tracked.returncode != 0:
        if os.environ.get("CI", "").lower() == "true":  # CI runs on a clone: never skip there
            pytest.fail(f"git ls-files failed: {tracked.stderr}")
        pytest.skip("not a git checkout")
    assert not [p for p in tracked.stdout.splitlines() if "/.snakemake/" in f"/{p}"]
