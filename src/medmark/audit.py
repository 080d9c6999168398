"""``medmark audit``: check a ``results/`` tree against its provenance records (README:
"Auditing results/").

Four checks, each finding naming a path and a reason:

- **artifacts** (:func:`check_artifacts`): every output a record names is present with the
  recorded sha256 (``missing``, ``changed``); every file of the tree belongs to a record
  (``extra``); every job's recorded inputs still have the digests the job read, its code hash
  matches the current code of its script, and its config files and resolved-config hash are
  the run's current ones (``stale``).
- **verdicts** (:func:`check_verdict`): each ``summary.json`` beside a ``per_image.csv`` is
  re-derived from the per-image rows with the τ, α and test it records (:mod:`medmark.verify`'s
  tests on the CSV columns); p-values, ΔP, WSR and the verdict must match (``verdict``).
- **secrets** (:func:`check_release`): nothing under ``release/`` is, links to, or contains an
  owner secret: generator weights or any model file, the owner directory's files, its id lists
  or key (``secret``).
- **release** (:func:`check_release_tree`): the CheXpert-layout image tree and the release HDF5
  files agree row by row (ids, labels, pixels) (``release``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medmark.errors import DataFormatError
from medmark.io import sha256_file, write_json_atomic
from medmark.provenance import PROVENANCE_DIR, SCHEMA, SNAKEMAKE_FILES, code_hash, sha256_tree

SKIPPED_DIRS = frozenset({PROVENANCE_DIR, "logs", "benchmarks"})
"""Top-level folders of ``results/`` that no record covers: the records, job logs, timings."""
SKIPPED_FILES = frozenset({"audit.json", "report.html"})
"""Top-level files written outside any job (this audit, ``snakemake --report``)."""
MODEL_SUFFIXES = frozenset({".pt", ".pth", ".onnx", ".ckpt", ".safetensors"})
RTOL, ATOL = 1e-9, 1e-12
"""Tolerance of a re-derived number against ``summary.json`` (the CSV holds full-precision
floats, so a re-derivation agrees to rounding)."""


@dataclass(frozen=True, order=True)
class Finding:
    """One problem: ``kind`` (missing, changed, extra, stale, verdict, secret, release,
    record), the path relative to the working directory, and why."""

    kind: str
    path: str
    reason: str


@dataclass
class Audit:
    """Findings and what was checked."""

    results: str
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    current: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, path: str | Path, reason: str) -> None:
        self.findings.append(Finding(kind, str(path), reason))

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self, wall_s: float | None = None) -> dict[str, Any]:
        kinds = Counter(f.kind for f in self.findings)
        return {
            "results": self.results,
            "clean": self.clean,
            "checked": dict(sorted(self.counts.items())),
            "findings_by_kind": dict(sorted(kinds.items())),
            "findings": [asdict(f) for f in sorted(set(self.findings))],
            "current": self.current,
            "wall_s": None if wall_s is None else round(wall_s, 1),
        }


# --------------------------------------------------------------------------- records


def load_records(results: Path, workdir: Path, audit: Audit) -> list[tuple[Path, dict]]:
    """Every readable record under ``results/provenance``; unreadable ones are findings."""
    out = []
    for path in sorted((results / PROVENANCE_DIR).rglob("*.json")):
        rel = path.relative_to(workdir)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            audit.add("record", rel, f"unreadable provenance record: {e}")
            continue
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            audit.add("record", rel, f"not a {SCHEMA} record")
            continue
        out.append((rel, rec))
    audit.counts["records"] = len(out)
    return out


def _snakemake_rule(workdir: Path, rel: str) -> str | None:
    """The rule Snakemake's own metadata (``.snakemake/metadata``) names for ``rel``."""
    name = base64.urlsafe_b64encode(rel.encode()).decode()
    try:
        meta = json.loads((workdir / ".snakemake" / "metadata" / name).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("rule") if isinstance(meta, dict) else None


def _walk(results: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(results, followlinks=True):
        r = Path(root)
        if r == results:
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
            files = [f for f in files if f not in SKIPPED_FILES]
        dirs.sort()
        for f in sorted(files):
            if f not in SNAKEMAKE_FILES:
                yield r / f


class _Digests:
    """Memoised :func:`sha256_tree` of paths relative to the working directory."""

    def __init__(self, workdir: Path, progress: Any = None) -> None:
        self.workdir, self.progress, self.memo = workdir, progress, {}

    def __call__(self, rel: str) -> str | None:
        if rel not in self.memo:
            p = self.workdir / rel
            d = sha256_tree(p) if p.exists() else None
            self.memo[rel] = None if d is None else d["sha256"]
            if self.progress is not None and d is not None:
                self.progress.update(d["size"])
        return self.memo[rel]


def check_artifacts(
    results: Path,
    workdir: Path,
    records: list[tuple[Path, dict]],
    audit: Audit,
    package_dir: Path,
    progress: Any = None,
) -> dict[str, tuple[Path, dict]]:
    """missing / changed / extra / stale (module docstring); returns output -> (record path,
    record)."""
    owners: dict[str, tuple[Path, dict]] = {}
    for rel, rec in records:
        outs = {**rec.get("outputs", {}), **rec.get("undeclared_outputs", {})}
        for out, digest in outs.items():
            if out in owners:
                audit.add("record", out, f"named by two records: {owners[out][0]} and {rel}")
            owners[out] = (rel, {"digest": digest, "record": rec})
    digest = _Digests(workdir, progress)
    for out, (rel, entry) in sorted(owners.items()):
        audit.counts["artifacts"] += 1
        now = digest(out)
        if now is None:
            audit.add("missing", out, f"recorded output is missing (record {rel})")
        elif now != entry["digest"]["sha256"]:
            audit.add("changed", out, f"sha256 differs from the record {rel}")
    dirs = tuple(o + "/" for o, (_, e) in owners.items() if "files" in (e["digest"] or {}))
    for path in _walk(results):
        rel_path = path.relative_to(workdir).as_posix()
        if rel_path in owners or rel_path.startswith(dirs):
            continue
        rule = _snakemake_rule(workdir, rel_path)
        hint = f" (Snakemake's metadata: rule {rule}, run without records)" if rule else ""
        audit.add("extra", rel_path, f"no provenance record names this file{hint}")
    _check_stale(records, workdir, audit, package_dir, digest)
    return {k: (v[0], v[1]["record"]) for k, v in owners.items()}


def _check_stale(
    records: list[tuple[Path, dict]],
    workdir: Path,
    audit: Audit,
    package_dir: Path,
    digest: _Digests,
) -> None:
    """Inputs changed since the job read them, other code, other config."""
    code_now: dict[str, str | None] = {}
    conf_now: dict[str, str | None] = {}
    config_hashes = Counter(r.get("config", {}).get("hash") for _, r in records)
    run_hash = config_hashes.most_common(1)[0][0] if config_hashes else None
    audit.current["config_hash"] = run_hash
    for rel, rec in records:
        first = sorted(rec.get("outputs", {}) or [str(rel)])[0]
        for inp, d in sorted(rec.get("inputs", {}).items()):
            if d is not None and digest(inp) not in (None, d["sha256"]):
                audit.add("stale", first, f"input {inp} changed since the job read it ({rel})")
        script = rec.get("code", {}).get("script")
        if script:
            if script not in code_now:
                sp = workdir / script
                code_now[script] = code_hash(sp, package_dir) if sp.is_file() else None
            if code_now[script] != rec["code"].get("code_hash"):
                audit.add(
                    "stale",
                    first,
                    f"produced by other code: code hash of {script} and the modules it imports "
                    f"differs from the current one ({rel})",
                )
        for cfg, sha in sorted(rec.get("config", {}).get("files", {}).items()):
            if cfg not in conf_now:
                cp = workdir / cfg if not Path(cfg).is_absolute() else Path(cfg)
                conf_now[cfg] = sha256_file(cp) if cp.is_file() else None
            if conf_now[cfg] != sha:
                audit.add("stale", first, f"config file {cfg} differs from the run's ({rel})")
        h = rec.get("config", {}).get("hash")
        if h != run_hash:
            audit.add(
                "stale",
                first,
                f"produced under config hash {str(h)[:12]}, the run's is {str(run_hash)[:12]} "
                f"({config_hashes[run_hash]} of {len(records)} records) ({rel})",
            )


# --------------------------------------------------------------------------- verdicts


def _num(x: Any) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):
        return float(x)  # "inf" / "-inf" of medmark.verify.json_safe
    return float(x)


def _close(a: Any, b: Any) -> bool:
    x, y = _num(a), _num(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL)


def rederive(summary: dict[str, Any], table: Any) -> dict[str, Any]:
    """The numbers of ``summary`` recomputed from its per-image ``table`` (a DataFrame) with
    the recorded τ, α, key τ and test mode, through :mod:`medmark.verify`'s tests."""
    import numpy as np

    from medmark.verify import hard_label_test, paired_ttest

    tau, alpha = float(summary["tau"]), float(summary["alpha"])
    target = int(summary["target_class"])
    pred_c = table["pred_clean"].to_numpy()
    pred_w = table["pred_watermarked"].to_numpy()
    out: dict[str, Any] = {
        "m": len(table),
        "wsr": float(np.mean(pred_w == target)),
        "target_rate_clean_pred": float(np.mean(pred_c == target)),
    }
    if summary.get("hard_label"):
        res = hard_label_test(pred_w, pred_c, target, tau, alpha).primary
        key = None
    else:
        p_c = table["p_target_clean"].to_numpy(np.float64)
        p_w = table["p_target_watermarked"].to_numpy(np.float64)
        res = paired_ttest(p_w, p_c, tau, alpha)
        out["delta_p"] = float(np.mean(p_w - p_c))
        out["mean_p_target_clean"] = float(p_c.mean())
        out["mean_p_target_watermarked"] = float(p_w.mean())
        key = None
        if summary.get("key_test") is not None:
            if "p_target_decoys_mean" not in table.columns:
                raise DataFormatError("no p_target_decoys_mean column for the key test")
            dec = table["p_target_decoys_mean"].to_numpy(np.float64)
            # key_specific_test on the decoys' mean is paired_ttest(p_w, mean_k p_decoys)
            key = paired_ttest(p_w, dec, float(summary["key_tau"]), alpha)
            out["key_p_value"] = key.p_value
    out |= {
        "test": res.test,
        "p_value": res.p_value,
        "log10_p": res.log10_p,
        "statistic": res.statistic,
        "tau_test_significant": res.significant,
    }
    detected = res.significant and (key is None or key.significant)
    out["verdict"] = "detected" if detected else "not detected"
    out["significant"] = detected
    return out


def check_verdict(summary_path: Path, workdir: Path, audit: Audit, record: dict | None) -> None:
    """Re-derive one verdict (module docstring) and compare it with ``summary.json``."""
    import pandas as pd

    rel = summary_path.relative_to(workdir)
    csv = summary_path.with_name("per_image.csv")
    try:
        summary = json.loads(summary_path.read_text())
        table = pd.read_csv(csv, dtype={"id": str})
        again = rederive(summary, table)
    except (OSError, ValueError, KeyError, TypeError, DataFormatError) as e:
        audit.add("verdict", rel, f"cannot re-derive the verdict from {csv.name}: {e}")
        return
    audit.counts["verdicts"] += 1
    for name, value in sorted(again.items()):
        if name == "key_p_value":
            have = (summary.get("key_test") or {}).get("p_value")
        else:
            have = summary.get(name)
        exact = isinstance(value, (str, bool, int))  # verdict, test, m: equal, not close
        if not (have == value if exact else _close(have, value)):
            audit.add(
                "verdict",
                rel,
                f"{name} is {have!r} in summary.json but {value!r} re-derived from "
                f"per_image.csv (tau={summary.get('tau')}, alpha={summary.get('alpha')})",
            )
    params = (record or {}).get("params", {}).get("verify")
    if isinstance(params, dict):
        for k in ("tau", "alpha", "key_tau"):
            if k in params and not _close(params[k], summary.get(k)):
                audit.add(
                    "verdict",
                    rel,
                    f"{k}={summary.get(k)!r} in summary.json, the job's params had {params[k]!r}",
                )


# --------------------------------------------------------------------------- release


def _release_dirs(results: Path) -> list[Path]:
    return sorted(
        p
        for p in results.rglob("release")
        if p.is_dir() and (p.parent / "owner" / "owner.json").is_file()
    )


def check_release(release: Path, workdir: Path, results: Path, audit: Audit) -> None:
    """No owner secret is reachable from ``release`` (module docstring)."""
    owner_dir = release.parent / "owner"
    owner = json.loads((owner_dir / "owner.json").read_text())
    audit.counts["releases"] += 1
    owner_files = [p for p in owner_dir.rglob("*") if p.is_file()]
    secret_hashes = {sha256_file(p): p for p in owner_files}
    for gen in results.glob("*/*/key*/generator/*.pt"):
        secret_hashes.setdefault(sha256_file(gen), gen)
    id_lists = [owner.get(k) for k in ("poisoned_ids", "verification_ids")]
    id_lists += list((owner.get("marked_groups") or {}).values())
    needles = [json.dumps(ids).encode() for ids in id_lists if ids]
    gen_sha = (owner.get("generator") or {}).get("sha256")
    if gen_sha:
        needles.append(str(gen_sha).encode())
    if len(str(owner.get("key", ""))) >= 6:  # a short key occurs by chance in binary files
        needles.append(str(owner["key"]).encode())
    owner_real = owner_dir.resolve()
    for path in sorted(release.rglob("*")):
        rel = path.relative_to(workdir)
        real = path.resolve()
        if real == owner_real or real.is_relative_to(owner_real) or "generator" in real.parts:
            audit.add("secret", rel, f"links into the owner's secret ({real})")
            continue
        if not path.is_file():
            continue
        if path.suffix.lower() in MODEL_SUFFIXES:
            audit.add("secret", rel, "a model/weights file inside release/")
        sha = sha256_file(path)
        if sha in secret_hashes:
            audit.add(
                "secret",
                rel,
                f"same bytes as the owner's {secret_hashes[sha].relative_to(workdir)}",
            )
            continue
        blob = path.read_bytes()
        if any(n in blob for n in needles):
            audit.add("secret", rel, "contains the owner's id lists, generator hash or key")


def check_release_tree(release: Path, workdir: Path, audit: Audit) -> None:
    """The release HDF5 files agree with each other and with the CheXpert-layout tree."""
    import h5py
    import numpy as np
    import pandas as pd
    from PIL import Image

    from medmark.data.labels import OBSERVATIONS
    from medmark.methods.release import tree_name

    h5s = sorted(release.glob("r*.h5"))
    tables: dict[int, tuple[Path, np.ndarray, np.ndarray]] = {}
    for h in h5s:
        try:
            with h5py.File(h, "r") as f:
                tables[int(f["images"].shape[1])] = (h, f["ids"].asstr()[:], f["labels"][:])
        except (OSError, KeyError, ValueError) as e:
            audit.add("release", h.relative_to(workdir), f"unreadable release HDF5: {e}")
    if not tables:
        return
    _, ids0, lab0 = next(iter(tables.values()))
    for h, ids, lab in tables.values():
        if not (np.array_equal(ids, ids0) and np.array_equal(lab, lab0, equal_nan=True)):
            audit.add("release", h.relative_to(workdir), "ids/labels differ between resolutions")
    # results/{variant}/{method}/{wm}/release: the tree is named after the method
    TREE_NAME = tree_name(release.parent.parent.name)  # noqa: N806
    tree = release / TREE_NAME
    if not tree.is_dir():
        return
    rel_tree = tree.relative_to(workdir)
    try:
        csv = pd.read_csv(tree / "train.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        audit.add("release", rel_tree / "train.csv", f"unreadable: {e}")
        return
    paths = [Path(p) for p in csv["Path"]]
    png = paths and tree.parent / paths[0]
    size = Image.open(png).size[0] if png and png.is_file() else None
    if size not in tables:
        audit.add("release", rel_tree, f"no release HDF5 at the tree's resolution {size}")
        return
    h, ids, labels = tables[size]
    want = [f"{TREE_NAME}/train/{i}.png" for i in ids]
    if list(csv["Path"]) != want:
        audit.add("release", rel_tree / "train.csv", f"rows differ from the ids of {h.name}")
        return
    obs = csv[list(OBSERVATIONS)].replace("", "nan").astype(np.float32).to_numpy()
    if not np.array_equal(obs, labels, equal_nan=True):
        audit.add("release", rel_tree / "train.csv", f"labels differ from {h.name}")
    listed = {tree.parent / p for p in want}
    for extra in sorted(p for p in (tree / "train").rglob("*") if p.is_file()):
        if extra not in listed:
            audit.add("release", extra.relative_to(workdir), "image not listed in train.csv")
    with h5py.File(h, "r") as f:
        images = f["images"]
        for i, p in enumerate(want):
            path = tree.parent / p
            if not path.is_file():
                audit.add("release", path.relative_to(workdir), "listed in train.csv, missing")
            elif not np.array_equal(np.asarray(Image.open(path)), images[i]):
                audit.add("release", path.relative_to(workdir), f"pixels differ from {h.name}")


# --------------------------------------------------------------------------- driver


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with grad-cam; without it, no bar
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc="hashing", leave=False)


def run_audit(
    results: str | os.PathLike[str],
    workdir: str | os.PathLike[str] | None = None,
    package_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Audit:
    """Audit ``results`` (module docstring); raise :class:`DataFormatError` when it is not a
    readable directory. ``workdir``: where the record paths are relative to (default: the
    parent of ``results``); ``package_dir``: the current code (default ``workdir/src/medmark``
    when it exists, else this package)."""
    res = Path(results)
    if not res.is_dir() or not os.access(res, os.R_OK | os.X_OK):
        raise DataFormatError("not a readable directory", file=str(res))
    wd = Path(workdir).resolve() if workdir is not None else res.resolve().parent
    res = res.resolve()
    if package_dir is None:
        local = wd / "src" / "medmark"
        package_dir = local if local.is_dir() else Path(__file__).parent
    audit = Audit(results=str(res))
    audit.current["package_dir"] = str(package_dir)
    from medmark.cluster import package_source_hash

    audit.current["package_source_hash"] = package_source_hash(package_dir)
    records = load_records(res, wd, audit)
    total = sum(p.stat().st_size for p in _walk(res) if p.exists())
    bar = _progress(total, progress)
    try:
        owners = check_artifacts(res, wd, records, audit, Path(package_dir), bar)
    finally:
        if bar is not None:
            bar.close()
    for summary in sorted(res.rglob("summary.json")):
        if summary.with_name("per_image.csv").is_file():
            rel = summary.relative_to(wd).as_posix()
            check_verdict(summary, wd, audit, owners.get(rel, (None, None))[1])
    for release in _release_dirs(res):
        try:
            check_release(release, wd, res, audit)
            check_release_tree(release, wd, audit)
        except (OSError, ValueError, KeyError) as e:
            audit.add("release", release.relative_to(wd), f"cannot check: {e}")
    return audit


def format_table(audit: Audit, limit: int | None = None) -> str:
    """The findings as an aligned text table, then one summary line."""
    rows = sorted(set(audit.findings))
    shown = rows if limit is None else rows[:limit]
    lines = []
    if shown:
        w1 = max(len("kind"), *(len(f.kind) for f in shown))
        w2 = min(80, max(len("path"), *(len(f.path) for f in shown)))
        lines.append(f"{'kind':<{w1}}  {'path':<{w2}}  reason")
        lines += [f"{f.kind:<{w1}}  {f.path:<{w2}}  {f.reason}" for f in shown]
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more in audit.json")
    checked = ", ".join(f"{v} {k}" for k, v in sorted(audit.counts.items()))
    kinds = Counter(f.kind for f in rows)
    verdict = "clean" if not rows else ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    lines.append(f"audit of {audit.results}: {verdict} (checked {checked})")
    return "\n".join(lines)


def write_audit(audit: Audit, out: str | os.PathLike[str], wall_s: float | None = None) -> None:
    write_json_atomic(out, audit.to_dict(wall_s))


def audit_cli(
    results: Path, out: Path | None, workdir: Path | None, limit: int | None, quiet: bool
) -> int:
    """``medmark audit``: 0 clean, 1 findings; :class:`DataFormatError` (exit 2) propagates."""
    import sys

    t0 = time.perf_counter()
    audit = run_audit(results, workdir, progress=not quiet and sys.stderr.isatty())
    wall = time.perf_counter() - t0
    out = out if out is not None else Path(results) / "audit.json"
    try:
        write_audit(audit, out, wall)
    except OSError as e:
        raise DataFormatError(f"cannot write the audit: {e}", file=str(out)) from e
    print(format_table(audit, limit))
    print(f"{wall:.1f} s; written to {out}")
    return 0 if audit.clean else 1
