"""Between-workflow caching (issue 6, item 3; docs/cluster.md).

Two fresh working directories share one ``SNAKEMAKE_OUTPUT_CACHE``; the second run must take
every cacheable output from the cache (Snakemake logs ``Symlinking output file X from cache.``)
instead of recomputing it. The toy workflow also counts real executions of its cached rule.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from workflow_helpers import (  # noqa: E402
    REPO,
    TOY,
    WORKFLOW_ENTRIES,
    compare_trees,
    copy_workflow,
    run_snakemake,
)

CACHE_TARGETS = ["data_all"]
TINY_PRESET = "config/presets/tiny.yaml"
STORED = re.compile(r"^Moving output file (\S+) to cache\.$", re.MULTILINE)
FETCHED = re.compile(r"^Symlinking output file (\S+) from cache\.$", re.MULTILINE)
TOY_CACHED = {f"results/numbers/{n}.txt" for n in (1, 2, 3)}


def _run_twice(
    tmp_path: Path, setup: list[tuple[Path, list[str]]], args: list[str], timeout: float
) -> tuple[Path, Path, str, str, dict[str, str]]:
    """Run ``snakemake --cache <args>`` in two fresh copies sharing one output cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache), "TOY_COUNTER": str(tmp_path / "counter")}
    logs = []
    dirs = []
    for name in ("first", "second"):
        work = tmp_path / name
        for src, entries in setup:
            copy_workflow(src, work, entries)
        # `--cache` takes rule names (nargs="*"): it goes last, after the targets.
        proc = run_snakemake(["--cores", "2", *args, "--cache"], work, env=env, timeout=timeout)
        assert proc.returncode == 0, proc.stdout
        logs.append(proc.stdout)
        dirs.append(work)
    return dirs[0], dirs[1], logs[0], logs[1], env


def test_toy_second_workdir_reuses_cache(tmp_path: Path) -> None:
    first, second, log1, log2, env = _run_twice(tmp_path, [(TOY, ["Snakefile"])], ["all"], 120)
    assert set(STORED.findall(log1)) == TOY_CACHED, log1
    assert FETCHED.findall(log1) == []
    assert set(FETCHED.findall(log2)) == TOY_CACHED, log2
    assert STORED.findall(log2) == []
    # The cached rule's command ran three times in all (first run only).
    assert sorted(Path(env["TOY_COUNTER"]).read_text().split()) == ["1", "2", "3"]
    cache = Path(env["SNAKEMAKE_OUTPUT_CACHE"])
    for rel in TOY_CACHED:
        out = second / rel
        assert out.is_symlink() and out.resolve().parent == cache.resolve()
    assert compare_trees(first / "results", second / "results") == []


def test_toy_cache_off_recomputes(tmp_path: Path) -> None:
    """Control: without ``--cache`` the same two runs compute everything twice."""
    counter = tmp_path / "counter"
    for name in ("first", "second"):
        work = copy_workflow(TOY, tmp_path / name, ["Snakefile"])
        proc = run_snakemake(["--cores", "2", "all"], work, env={"TOY_COUNTER": str(counter)})
        assert proc.returncode == 0, proc.stdout
        assert "from cache" not in proc.stdout
    assert sorted(counter.read_text().split()) == ["1", "1", "2", "2", "3", "3"]


@pytest.mark.slow
def test_tiny_preset_second_workdir_reuses_cache(tmp_path: Path) -> None:
    """The real pipeline: every output the first run stored is taken from the cache by the
    second, and the two ``results/`` trees are equal."""
    missing = [e for e in (*WORKFLOW_ENTRIES, TINY_PRESET) if not (REPO / e).exists()]
    assert not missing, f"the pipeline is not complete yet: missing {missing}"
    first, second, log1, log2, _ = _run_twice(
        tmp_path,
        [(REPO, list(WORKFLOW_ENTRIES))],
        [*CACHE_TARGETS, "--configfile", TINY_PRESET],  # targets first: nargs="+"
        600,
    )
    stored = set(STORED.findall(log1))
    assert stored, f"no rule on the way to {CACHE_TARGETS} is cacheable:\n{log1}"
    print("\nstored in the cache by the first run:", *sorted(stored), sep="\n  ")
    assert set(FETCHED.findall(log2)) == stored, log2
    assert STORED.findall(log2) == []
    assert compare_trees(first / "results", second / "results") == []
