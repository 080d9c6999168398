"""Per-job provenance records (README: "Auditing results/").

Every ``script:`` job of the workflow writes one JSON record when its outputs exist
(:func:`medmark.logs.script_logging` calls :func:`write_job_record`):
``results/provenance/{rule}/{id}.json`` with ``id`` the first 16 hex digits of the sha256 of the
job's sorted output paths. A record holds what ``.snakemake/metadata`` lacks: the sha256 of every
output and input (directories hashed entry by entry, :func:`sha256_tree`), the resolved params,
the resolved-config hash and the sha256 of each config file, the package source hash, the hash of
the code the job's script imports (:func:`code_hash`), the git commit (or ``dirty`` with the
diff's hash), library versions, device, seeds, and start/end times. Keys are sorted; apart from
``start``/``end`` a record is a function of the job's inputs, params and code.

This module imports neither torch nor Snakemake: the workflow imports it at parse time.
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from medmark.io import sha256_file, stable_hash, write_json_atomic

SCHEMA = "medmark.provenance/1"
PROVENANCE_DIR = "provenance"
"""Folder of the records, inside ``results/``."""
CONFIGFILES_VAR = "MEDMARK_CONFIGFILES"
"""os.pathsep-separated config files of the run (set by rules/provenance.smk)."""
LIBRARIES = ("torch", "torchvision", "grad-cam", "snakemake", "numpy", "scipy", "h5py", "pandas")
UNDECLARED_PARAMS = ("last",)
"""Params naming files a job writes beside its declared outputs (training checkpoints)."""
UNDECLARED_DIRS = {"xmark_release": ("release_dir", "CheXpert-v1.0-small-xmark")}
"""Rule -> (param, sub-folder): undeclared folders a job writes (the release's image tree)."""
PACKAGE = "medmark"
SNAKEMAKE_FILES = frozenset({".snakemake_timestamp"})
"""Files Snakemake adds into a ``directory()`` output after the job: not part of its digest."""
OUTPUT_NEUTRAL = frozenset({"medmark.logs", "medmark.provenance"})
"""Modules every script imports that never change an output (logging, these records): left out
of :func:`code_files` so that editing them does not invalidate cached outputs."""


# --------------------------------------------------------------------------- hashing


def sha256_tree(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Digest of a file or a directory: a directory hashes its files' relative paths and
    contents in sorted order (symlinks followed; :data:`SNAKEMAKE_FILES` left out), so equal
    trees give equal digests."""
    p = Path(path)
    if not p.is_dir():
        return {"sha256": sha256_file(p), "size": p.stat().st_size}
    h = hashlib.sha256()
    n = size = 0
    for f in sorted(q for q in p.rglob("*") if q.is_file() and q.name not in SNAKEMAKE_FILES):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\0")
        n += 1
        size += f.stat().st_size
    return {"sha256": h.hexdigest(), "size": size, "files": n}


def _module_file(root: Path, name: str) -> Path | None:
    """The source of module ``name`` (``medmark.x.y``) under the package ``root``."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    py = base.with_suffix(".py")
    return py if parts and py.is_file() else None


def _imported(path: Path, module: str | None) -> set[str]:
    """Absolute names of the modules ``path`` imports anywhere (lazy imports included), with
    ``from a import b`` also read as the submodule ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = (module or "").split(".")
    if module is not None and path.name != "__init__.py":
        pkg = pkg[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def code_files(script: str | os.PathLike[str], package_dir: str | os.PathLike[str]) -> list[Path]:
    """The script and every module of the package that it imports, directly or transitively
    (parent ``__init__`` files included; :data:`OUTPUT_NEUTRAL` left out): the code that can
    change the script's outputs."""
    root = Path(package_dir)
    seen: dict[str, Path] = {}
    todo = sorted(_imported(Path(script), None))
    while todo:
        name = todo.pop()
        if name in OUTPUT_NEUTRAL or (name != PACKAGE and not name.startswith(PACKAGE + ".")):
            continue
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            sub = ".".join(parts[:k])
            if sub in seen or sub in OUTPUT_NEUTRAL:
                continue
            f = _module_file(root, sub)
            if f is None:
                continue
            seen[sub] = f
            todo.extend(_imported(f, sub))
    return [Path(script), *sorted(set(seen.values()))]


def code_hash(script: str | os.PathLike[str], package_dir: str | os.PathLike[str]) -> str:
    """sha256 over the files of :func:`code_files` (path relative to the package's parent or
    the script's name, and content). Enters the params of every cached rule."""
    root = Path(package_dir)
    h = hashlib.sha256()
    for f in code_files(script, root):
        rel = f.relative_to(root.parent).as_posix() if f.is_relative_to(root) else f.name
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def git_state(repo: str | os.PathLike[str]) -> dict[str, Any]:
    """``commit``, ``dirty`` and (when dirty) the sha256 of ``git diff HEAD`` of ``repo``;
    ``commit`` is None outside a git checkout."""

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)

    try:
        head = git("rev-parse", "HEAD")
    except OSError:
        return {"commit": None, "dirty": None, "diff_sha256": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "diff_sha256": None}
    diff = git("diff", "HEAD", "--", "src", "scripts", "rules", "Snakefile", "config").stdout
    return {
        "commit": head.stdout.decode().strip(),
        "dirty": bool(diff),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
    }


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def config_files(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """sha256 of each config file of the run (None: missing), as named in ``CONFIGFILES_VAR``
    (relative to the working directory when inside it)."""
    env = os.environ if environ is None else environ
    names = [_rel(n, Path.cwd()) for n in env.get(CONFIGFILES_VAR, "").split(os.pathsep) if n]
    return {n: sha256_file(n) if Path(n).is_file() else None for n in names}


def _device() -> str:
    torch = sys.modules.get("torch")  # never imported here just to look
    if torch is not None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def _json_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


# --------------------------------------------------------------------------- records


def record_id(outputs: Iterable[str]) -> str:
    return hashlib.sha256("\0".join(sorted(outputs)).encode()).hexdigest()[:16]


def record_path(results: str | os.PathLike[str], rule: str, outputs: Iterable[str]) -> Path:
    return Path(results) / PROVENANCE_DIR / rule / f"{record_id(outputs)}.json"


def undeclared_outputs(rule: str, params: Mapping[str, Any]) -> list[str]:
    """Files and folders the job writes beside its declared outputs (:data:`UNDECLARED_PARAMS`,
    :data:`UNDECLARED_DIRS`) that exist now."""
    out = [str(params[k]) for k in UNDECLARED_PARAMS if isinstance(params.get(k), str)]
    if rule in UNDECLARED_DIRS:
        param, sub = UNDECLARED_DIRS[rule]
        if isinstance(params.get(param), str):
            out.append(f"{params[param]}/{sub}")
    return [p for p in out if Path(p).exists()]


def job_record(
    *,
    rule: str,
    wildcards: Mapping[str, Any],
    inputs: Iterable[str],
    outputs: Iterable[str],
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    script: str | os.PathLike[str] | None,
    repo: str | os.PathLike[str],
    start: datetime,
    end: datetime,
    threads: int | None = None,
    package_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The record of one finished job (module docstring); paths relative to the working dir.
    ``package_dir``: the package the job ran (default: this one)."""
    from medmark.cluster import package_source_hash

    outputs = list(dict.fromkeys(outputs))
    extra = [p for p in undeclared_outputs(rule, params) if p not in outputs]
    package = Path(package_dir) if package_dir is not None else Path(__file__).parent
    seeds = {k: v for k, v in params.items() if "seed" in k and isinstance(v, int)}
    seeds["config.seed"] = config.get("seed")
    code: dict[str, Any] = {
        "package_source_hash": package_source_hash(package),
        "git": git_state(repo),
    }
    if script is not None:
        code |= {"script": _rel(script, repo), "code_hash": code_hash(script, package)}
    return {
        "schema": SCHEMA,
        "rule": rule,
        "wildcards": {k: str(v) for k, v in wildcards.items()},
        "outputs": {p: sha256_tree(p) for p in outputs},
        "undeclared_outputs": {p: sha256_tree(p) for p in extra},
        "inputs": {p: sha256_tree(p) if Path(p).exists() else None for p in sorted(set(inputs))},
        "params": _json_value(dict(params)),
        "config": {"hash": stable_hash(config), "files": config_files()},
        "code": code,
        "versions": {"python": platform.python_version(), **library_versions()},
        "device": {"requested": _json_value(params.get("device")), "used": _device()},
        "threads": threads,
        "seeds": _json_value(seeds),
        "start": start.isoformat(timespec="seconds"),
        "end": end.isoformat(timespec="seconds"),
    }


def _rel(path: str | os.PathLike[str], repo: str | os.PathLike[str]) -> str:
    p, r = Path(path).resolve(), Path(repo).resolve()
    return p.relative_to(r).as_posix() if p.is_relative_to(r) else str(path)


def now() -> datetime:
    return datetime.now(UTC)


def script_path(job: Any) -> Path | None:
    """The original script of a Snakemake ``script:`` job: Snakemake runs a copy of it with
    ``__file__`` set to the original's real path (``snakemake/script``'s preamble)."""
    main = sys.modules.get("__main__")
    name = getattr(main, "__file__", None)
    if getattr(main, "snakemake", None) is not job or not name:
        return None
    path = Path(name)
    return path if path.is_file() else None


def results_root(outputs: Iterable[str]) -> Path:
    """The ``results/`` folder of a job: the first component of its (relative) outputs."""
    first = Path(next(iter(outputs)))
    return Path(first.parts[0]) if not first.is_absolute() else first.parent


def write_job_record(job: Any, start: datetime) -> Path | None:
    """Write the record of the Snakemake script job ``job`` (the ``snakemake`` object); None
    when the job has no outputs."""
    outputs = [str(o) for o in job.output]
    if not outputs:
        return None
    params = dict(job.params.items())
    script = script_path(job)
    repo = Path(job.scriptdir).parent if getattr(job, "scriptdir", None) else Path.cwd()
    record = job_record(
        rule=job.rule,
        wildcards=dict(job.wildcards.items()),
        inputs=[str(i) for i in job.input],
        outputs=outputs,
        params=params,
        config=job.config,
        script=script,
        repo=repo,
        start=start,
        end=now(),
        threads=job.threads,
    )
    path = record_path(results_root(outputs), job.rule, outputs)
    write_json_atomic(path, record)
    return path


def snakemake_job() -> Any:
    """The ``snakemake`` object of the running ``script:`` job, or None outside one."""
    return getattr(sys.modules.get("__main__"), "snakemake", None)
