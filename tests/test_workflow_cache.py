"""Between-workflow caching (docs/cluster.md).

Two fresh working directories share one ``SNAKEMAKE_OUTPUT_CACHE``; the second run must take
every cacheable output from the cache instead of recomputing it: Snakemake logs
``Symlinking output file X from cache.`` without a preceding ``Moving output file X to cache.``
(the first run logs both). The toy workflow also counts real executions of its cached rule.
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

from medmark.cluster import cache_collisions, package_source_hash  # noqa: E402

CACHE_TARGETS = ["data_all", "results/saliency/resnet18_r32/r32.h5"]
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


@pytest.mark.snakemake
def test_toy_second_workdir_reuses_cache(tmp_path: Path) -> None:
    first, second, log1, log2, env = _run_twice(tmp_path, [(TOY, ["Snakefile"])], ["all"], 120)
    assert set(STORED.findall(log1)) == TOY_CACHED, log1
    # (Storing also symlinks the output back from the cache, so "Symlinking ... from cache." is
    # in both logs; only the second run has it without "Moving ... to cache.")
    assert set(FETCHED.findall(log2)) == TOY_CACHED, log2
    assert STORED.findall(log2) == []
    # The cached rule's command ran three times in all (first run only).
    assert sorted(Path(env["TOY_COUNTER"]).read_text().split()) == ["1", "2", "3"]
    cache = Path(env["SNAKEMAKE_OUTPUT_CACHE"])
    for rel in TOY_CACHED:
        out = second / rel
        assert out.is_symlink() and out.resolve().parent == cache.resolve()
    assert compare_trees(first / "results", second / "results") == []


@pytest.mark.snakemake
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
@pytest.mark.heavy
@pytest.mark.snakemake
def test_tiny_preset_second_workdir_reuses_cache(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """The real pipeline: every output the first run stored is taken from the cache by the
    second (which then builds the rest of ``data_all`` on top of them)."""
    missing = [e for e in (*WORKFLOW_ENTRIES, TINY_PRESET) if not (REPO / e).exists()]
    assert not missing, f"the pipeline is not complete yet: missing {missing}"
    _, second, log1, log2, env = _run_twice(
        tmp_path,
        [(REPO, list(WORKFLOW_ENTRIES))],
        [*CACHE_TARGETS, "--configfile", TINY_PRESET],  # targets first: nargs="+"
        600,
    )
    stored = set(STORED.findall(log1))
    assert stored, f"no rule on the way to {CACHE_TARGETS} is cacheable:\n{log1}"
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():  # the evidence belongs in the CI log
        print("\nstored in the cache by the first run:", *sorted(stored), sep="\n  ")
    fetched = set(FETCHED.findall(log2))
    # A directory() output is stored as the directory and fetched entry by entry.
    assert {_declared(p, stored) for p in fetched} == stored, log2
    assert STORED.findall(log2) == []
    cache = Path(env["SNAKEMAKE_OUTPUT_CACHE"]).resolve()
    for rel in fetched:  # the second checkout's outputs are the first run's files, in the cache
        out = second / rel  # a file: one symlink; a directory() output: symlinked entries
        entries = [out] if out.is_symlink() else sorted(out.iterdir())
        assert entries and all(e.is_symlink() and cache in e.resolve().parents for e in entries)


def _declared(path: str, declared: set[str]) -> str:
    """The declared output a fetched path belongs to (itself, or its directory() output)."""
    return next((d for d in declared if path.startswith(d + "/")), path)


def test_cache_collisions_groups_shared_keys() -> None:
    keyed = [("h1", "a[n=1]"), ("h2", "a[n=2]"), ("h1", "a[n=3]"), ("h3", "b[]"), ("h1", "a[n=1]")]
    assert cache_collisions(keyed) == [["a[n=1]", "a[n=3]"]]
    assert cache_collisions([("h1", "a"), ("h2", "b")]) == []


@pytest.mark.snakemake
def test_toy_workflow_without_wildcard_param_is_refused(tmp_path: Path) -> None:
    """Without the param, Snakemake gives numbers[n=1..3] one cache key (it ignores wildcards):
    check_cache_collisions stops the run before any job, naming the colliding jobs."""
    work = copy_workflow(TOY, tmp_path / "w", ["Snakefile"])
    snakefile = work / "Snakefile"
    text = snakefile.read_text()
    broken = text.replace("        n=lambda wildcards: int(wildcards.n),\n", "").replace(
        "{params.n}", "{wildcards.n}"
    )
    assert broken != text
    snakefile.write_text(broken)
    (tmp_path / "cache").mkdir()
    proc = run_snakemake(
        ["--cores", "1", "all", "--cache"],
        work,
        env={"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "cache")},
        timeout=120,
    )
    assert proc.returncode != 0
    assert "CacheKeyError" in proc.stdout, proc.stdout
    assert "numbers[n=1] = numbers[n=2] = numbers[n=3]" in proc.stdout
    assert not (work / "results").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_package_source_hash_tracks_code(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    first = package_source_hash(pkg)
    assert package_source_hash(pkg) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert package_source_hash(pkg) != first
    assert len(package_source_hash()) == 64


SURROGATE = "results/surrogate/resnet18_r32/model.pt"
SYNTHETIC = "results/data/synthetic"


def _edit(work: Path, rel: str, old: str, new: str) -> None:
    path = work / rel
    text = path.read_text()
    assert old in text, f"{rel}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.snakemake
def test_tiny_preset_code_edit_recomputes_only_what_it_can_change(tmp_path: Path) -> None:
    """Cached rules carry the hash of the code their script imports (rules/provenance.smk).

    Three working copies share one cache: the first stores the surrogate; the second, with the
    README and a module the surrogate never imports (medmark/report.py) edited, takes it from
    the cache; the third, with a function the surrogate's training calls edited
    (medmark.train.resize_batch), recomputes it, while the synthetic data (whose code did not
    change) still comes from the cache.
    """
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    edits = {
        "first": [],
        "readme": [
            ("README.md", "# ", "# (edited) "),
            ("src/medmark/report.py", '"""', '"""Edited. '),
        ],
        "code": [
            (
                "src/medmark/train.py",
                "def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:\n",
                "def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:\n"
                "    _ = 'an edit of a function the surrogate uses'\n",
            )
        ],
    }
    logs = {}
    for name, changes in edits.items():
        work = copy_workflow(REPO, tmp_path / name, [*WORKFLOW_ENTRIES, "README.md"])
        for rel, old, new in changes:
            _edit(work, rel, old, new)
        proc = run_snakemake(
            ["--cores", "2", SURROGATE, "--configfile", TINY_PRESET, "--cache"],
            work,
            env=env,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout
        logs[name] = proc.stdout
    assert SURROGATE in STORED.findall(logs["first"])
    assert STORED.findall(logs["readme"]) == [], logs["readme"]
    assert SURROGATE in FETCHED.findall(logs["readme"])
    assert SURROGATE in STORED.findall(logs["code"]), logs["code"]
    assert SYNTHETIC in STORED.findall(logs["first"])
    assert SYNTHETIC not in STORED.findall(logs["code"])
    assert any(p.startswith(SYNTHETIC + "/") for p in FETCHED.findall(logs["code"]))
