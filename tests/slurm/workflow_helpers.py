"""Helpers shared by tests/test_slurm.py and tests/test_workflow_cache.py (docs/cluster.md):
copy a workflow into a fresh working directory, run Snakemake there, read the Slurm evidence
from its log, and compare two ``results/`` trees (HDF5 by datasets and attributes)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "slurm" / "toy"
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = VENV_BIN / "snakemake"

WORKFLOW_ENTRIES = (
    "Snakefile",
    "rules",
    "scripts",
    "config",
    "envs",
    "slurm",
    "profiles",
    "src",
    "report",
)
"""What a working copy of the real pipeline needs (rules/common.smk reads and imports `src/`)."""

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
RULE_HEADER = re.compile(r"^(local)?rule (\w+):$", re.MULTILINE)
IGNORED_KEYS = frozenset({"created_by", "created_at", "timestamp", "epoch_seconds", "seconds"})
"""HDF5 attributes / JSON / checkpoint keys and CSV columns that legitimately differ between two
runs (provenance stamps and measured wall times)."""
SKIPPED_DIRS = frozenset({"logs", "benchmarks"})
"""``results/`` sub-folders whose content is run-specific (job logs, timings)."""
RECORD_STAMPS = frozenset({"start", "end"})
"""Keys of a provenance record (``results/provenance/``) that hold the job's own times."""
RECORD_FILE_MAPS = ("inputs", "outputs", "undeclared_outputs")
"""Keys of a provenance record that map a file to its sha256 and size. Files whose content
holds measured times (``seconds`` columns, ``created_at``) hash differently between two runs; the
files themselves are compared key by key, so a record is compared on which files it names."""


def copy_workflow(src: Path, dst: Path, entries: Iterable[str]) -> Path:
    """Copy ``entries`` (files or folders) of ``src`` into ``dst``; missing ones are an error."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("results", ".snakemake", "__pycache__")
    for name in entries:
        path = src / name
        if path.is_dir():
            shutil.copytree(path, dst / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, dst / name)
        else:
            raise FileNotFoundError(f"{path} is missing: cannot set up a working copy")
    return dst


def check_snakemake_allowed() -> None:
    """Fail a pytest test that starts Snakemake without the ``snakemake`` marker."""
    if "PYTEST_CURRENT_TEST" in os.environ and not os.environ.get(
        "MEDMARK_TEST_MAY_START_SNAKEMAKE"
    ):
        raise AssertionError(
            "this test starts Snakemake: mark it @pytest.mark.snakemake (and heavy if it runs "
            "for minutes) so that the fast layer selects it knowingly"
        )


def run_snakemake(
    args: list[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the venv's ``snakemake`` in ``cwd``; stdout and stderr combined in ``.stdout``.

    Under pytest only a test marked ``snakemake`` may call it (``tests/conftest.py``).
    """
    check_snakemake_allowed()
    full_env = dict(os.environ)
    full_env["PATH"] = f"{VENV_BIN}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(env or {})
    return subprocess.run(
        [str(SNAKEMAKE), *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def submissions(log: str) -> list[tuple[int, int, Path]]:
    """``(snakemake job id, Slurm job id, Slurm log file)`` for every job that went through sbatch."""
    return [(int(a), int(b), Path(c)) for a, b, c in SUBMITTED.findall(log)]


def rule_headers(log: str) -> list[tuple[bool, str]]:
    """``(is_local, rule)`` for every job block Snakemake printed."""
    return [(bool(local), rule) for local, rule in RULE_HEADER.findall(log)]


def result_files(root: Path) -> set[str]:
    """Relative paths of the files under ``root`` (symlinks followed), run-specific folders left out."""
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIPPED_DIRS or any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_file():
            out.add(rel.as_posix())
    return out


def compare_trees(a: Path, b: Path) -> list[str]:
    """Differences between two ``results/`` trees: file sets, then each file by content.

    Text is compared after replacing each tree's working directory by ``<WD>`` (paths recorded
    in provenance files); JSON and HDF5 ignore :data:`IGNORED_KEYS`; other files byte by byte.
    """
    files_a, files_b = result_files(a), result_files(b)
    diffs = [f"only in {a}: {p}" for p in sorted(files_a - files_b)]
    diffs += [f"only in {b}: {p}" for p in sorted(files_b - files_a)]
    wd_a, wd_b = str(a.parent), str(b.parent)
    for rel in sorted(files_a & files_b):
        fa, fb = a / rel, b / rel
        if fa.suffix in {".h5", ".hdf5"}:
            diffs += [f"{rel}: {d}" for d in compare_h5(fa, fb, wd_a, wd_b)]
        elif fa.suffix == ".json":
            ja = _drop_ignored(json.loads(fa.read_text().replace(wd_a, "<WD>")))
            jb = _drop_ignored(json.loads(fb.read_text().replace(wd_b, "<WD>")))
            if rel.startswith("provenance/"):
                ja, jb = _record_view(ja), _record_view(jb)
            if ja != jb:
                diffs.append(f"{rel}: JSON differs")
        elif fa.suffix == ".pt":
            if not _same_checkpoint(fa, fb):
                diffs.append(f"{rel}: checkpoint differs")
        elif fa.suffix == ".csv":
            ta, tb = _read_csv(fa, wd_a), _read_csv(fb, wd_b)
            if not ta.equals(tb):
                diffs.append(f"{rel}: table differs")
        elif fa.suffix in {".txt", ".tsv", ".yaml", ".md"}:
            if fa.read_text().replace(wd_a, "<WD>") != fb.read_text().replace(wd_b, "<WD>"):
                diffs.append(f"{rel}: text differs")
        elif fa.read_bytes() != fb.read_bytes():
            diffs.append(f"{rel}: bytes differ")
    return diffs


def compare_h5(a: Path, b: Path, wd_a: str = "", wd_b: str = "") -> list[str]:
    """Differences between two HDF5 files: object names, dataset dtype/shape/values, attributes."""
    diffs: list[str] = []
    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
        names_a, names_b = _h5_names(ha), _h5_names(hb)
        if names_a != names_b:
            return [f"objects differ: {sorted(names_a ^ names_b)}"]
        for name in sorted(names_a):
            oa, ob = ha[name], hb[name]
            if _attrs(oa, wd_a) != _attrs(ob, wd_b):
                diffs.append(f"{name}: attributes differ")
            if isinstance(oa, h5py.Dataset):
                va, vb = oa[()], ob[()]
                if oa.dtype != ob.dtype or np.shape(va) != np.shape(vb):
                    diffs.append(
                        f"{name}: dtype/shape {oa.dtype}{np.shape(va)} vs {ob.dtype}{np.shape(vb)}"
                    )
                elif not _array_equal(va, vb):
                    diffs.append(f"{name}: values differ")
    return diffs


def _h5_names(f: h5py.File) -> set[str]:
    names = {"/"}
    f.visit(names.add)
    return names


def _attrs(obj: h5py.HLObject, wd: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.attrs.items():
        if key in IGNORED_KEYS:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str):
            value = value.replace(wd, "<WD>") if wd else value
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


def _array_equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _read_csv(path: Path, wd: str) -> pd.DataFrame:
    table = pd.read_csv(io.StringIO(path.read_text().replace(wd, "<WD>")))
    return table.drop(columns=[c for c in table.columns if c in IGNORED_KEYS])


def _same_checkpoint(a: Path, b: Path) -> bool:
    """Two torch checkpoints hold equal tensors and equal values (ignored keys left out)."""
    ca = torch.load(a, map_location="cpu", weights_only=False)
    cb = torch.load(b, map_location="cpu", weights_only=False)
    return _same_value(_drop_ignored(ca), _drop_ignored(cb))


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _record_view(record: dict[str, Any]) -> dict[str, Any]:
    """A provenance record without its times, each file map reduced to the files it names."""
    view = {k: v for k, v in record.items() if k not in RECORD_STAMPS}
    for key in RECORD_FILE_MAPS:
        view[key] = sorted(view.get(key) or {})
    return view


def _drop_ignored(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_ignored(v) for k, v in obj.items() if k not in IGNORED_KEYS}
    if isinstance(obj, list):
        return [_drop_ignored(v) for v in obj]
    return obj
