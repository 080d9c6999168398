"""Dataset staging (download, verify, extract) and the ingest stage.

Implements the staging and ingest of ``docs/methods/data.md`` and the ``data/`` contract of
``docs/architecture.md``: CheXpert cannot be fetched anonymously, so it is either
pre-staged (``data.chexpert.dir``) or downloaded from a user-supplied http/https/file URL with
an expected sha256 (resumed with HTTP Range from a ``.part`` file, verified, renamed into place
atomically, extracted with path-traversal protection). ``ingest`` writes ``metadata.csv``,
``boxes.csv``, ``ingest.json`` and the quarantine CSV (the one quarantine of the pipeline:
images are decoded and validated here, so the counts are of usable images), all atomically.
Only the stdlib (:mod:`urllib`) downloads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from medmark.data import synthetic
from medmark.data.chexpert import (
    BOX_COLUMNS,
    METADATA_COLUMNS,
    QUARANTINE_COLUMNS,
    ErrorList,
    ParseResult,
    finalize_metadata,
    parse_chexpert_boxes,
    parse_chexpert_csv,
)
from medmark.data.labels import OBSERVATIONS
from medmark.data.nih import BBOX_LIST, DATA_ENTRY, parse_nih, parse_nih_boxes
from medmark.errors import DataFormatError
from medmark.io import atomic_path, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "chexpert", "nih")
# The last one is medmark's own release tree (a receiver ingests it with source: chexpert).
CHEXPERT_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0", "CheXpert-v1.0-small-xmark")
CHEXPERT_CSVS = ("train.csv", "valid.csv")
CHEXPERT_HOWTO = (
    "CheXpert cannot be downloaded anonymously. Register and accept the research use agreement on "
    "the Stanford AIMI page https://stanfordaimi.azurewebsites.net/datasets/8cbd9ed4-2eb9-4565-affc-111cf4f7ebe2 "
    "(see also https://stanfordmlgroup.github.io/competitions/chexpert/), download CheXpert-v1.0-small, then "
    "EITHER unpack it and set data.chexpert.dir to the directory that CONTAINS CheXpert-v1.0-small/ "
    "(or CheXpert-v1.0/) with train.csv and valid.csv, OR set data.chexpert.url (http/https/file URL of the "
    "zip) and data.chexpert.sha256 (its sha256, 64 hex digits) in config/config.yaml. "
    "Or use data.source: synthetic (the embedded default) to run without any download."
)
_EXTRACT_STAMP = ".medmark-extracted"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError):
    """A transfer failed (network, HTTP status); the ``.part`` file is kept for a resume."""


# --------------------------------------------------------------------------------------------
# Download and extract.
# --------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, name: str, total: int | None, done: int, enabled: bool) -> None:
        self.name, self.total, self.done, self.enabled = name, total, done, enabled
        self.last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 2.0:
            self.last = now
            self.report()

    def report(self) -> None:
        if not self.enabled:
            return
        mib = self.done / 2**20
        if self.total:
            msg = f"download {self.name}: {mib:.1f} / {self.total / 2**20:.1f} MiB ({100 * self.done / self.total:.0f}%)"
        else:
            msg = f"download {self.name}: {mib:.1f} MiB"
        print(msg, file=sys.stderr, flush=True)


def _copy_stream(src: Any, dst: Any, prog: _Progress, chunk: int = 1 << 20) -> None:
    while block := src.read(chunk):
        dst.write(block)
        prog.add(len(block))
    prog.report()


def _fetch_http(url: str, part: Path, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "medmark-ingest"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    shown = _redact(url)
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to fetch: the .part is complete (sha decides)
            log.info(
                "download %s: server reports the range past the end; verifying %s", shown, part
            )
            return
        raise DownloadError(f"download of {shown} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"download of {shown} failed: {e}") from e
    with resp:
        mode = "wb"
        if offset:
            content_range = resp.headers.get("Content-Range", "")
            if resp.status == 206 and content_range.startswith(f"bytes {offset}-"):
                mode = "ab"
                log.info("download %s: resuming at byte %d", shown, offset)
            else:
                log.info("download %s: server ignored the Range request; starting over", shown)
                offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        prog = _Progress(part.name.removesuffix(".part"), total, offset, progress)
        try:
            with open(part, mode) as f:
                _copy_stream(resp, f, prog)
        except OSError as e:
            raise DownloadError(f"download of {shown} interrupted at byte {prog.done}: {e}") from e


def _fetch_file(url: str, part: Path, progress: bool) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file URL {url!r} names a remote host; use file:///absolute/path")
    src = Path(urllib.request.url2pathname(parts.path))
    if not src.is_file():
        raise DownloadError(f"download of {url} failed: no such file {src}")
    size = src.stat().st_size
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        offset = 0
    with open(src, "rb") as s, open(part, "ab" if offset else "wb") as d:
        s.seek(offset)
        _copy_stream(s, d, _Progress(part.name.removesuffix(".part"), size, offset, progress))


def _redact(url: str) -> str:
    """The URL without query/fragment (signed download URLs carry tokens there)."""
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc, p.path, "", ""))


def _check_sha(sha256: str) -> str:
    s = (sha256 or "").strip().lower()
    if not _SHA_RE.match(s):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return s


def download(url: str, dest: Path, sha256: str, progress: bool = True) -> Path:
    """Download ``url`` (http, https or file) to ``dest``, verifying ``sha256``.

    Bytes go to ``dest.part``; an existing ``.part`` is resumed (HTTP ``Range``, or a seek for
    ``file://``). On a checksum mismatch the ``.part`` is removed and the error names the
    expected and actual digests; on success ``.part`` is renamed onto ``dest`` atomically. An
    existing ``dest`` with the right checksum is reused.
    """
    expected = _check_sha(sha256)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ValueError(
            f"unsupported URL scheme {scheme!r} in {_redact(url)!r}; use http, https or file"
        )
    if dest.exists():
        got = sha256_file(dest)
        if got == expected:
            log.info("download: %s already present with the expected sha256", dest)
            return dest
        raise DataFormatError(
            f"{dest} exists with sha256 {got}, expected {expected}; remove it to download again",
            file=str(dest), field="sha256",
        )  # fmt: skip
    part = dest.with_name(dest.name + ".part")
    if scheme == "file":
        _fetch_file(url, part, progress)
    else:
        _fetch_http(url, part, progress)
    got = sha256_file(part)
    if got != expected:
        part.unlink(missing_ok=True)
        raise DataFormatError(
            f"sha256 mismatch: expected {expected}, got {got}; the partial download was removed",
            file=_redact(url), field="sha256",
        )  # fmt: skip
    os.replace(part, dest)
    log.info("download: %s verified (sha256 %s)", dest, expected)
    return dest


def _safe_member(name: str, archive: Path) -> None:
    pp = PurePosixPath(name)
    if "\\" in name or pp.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in pp.parts:
        raise DataFormatError(
            f"archive member {name!r} would be written outside the target", file=str(archive)
        )


def extract(archive: Path, dest: Path) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) into ``dest`` (which must not exist); returns ``dest``.

    Every member is checked first: absolute names, ``..`` components, links and device files
    are rejected. Extraction happens in a temporary folder renamed onto ``dest`` at the end.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"extract target {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _safe_member(info.filename, archive)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise DataFormatError(
                            f"archive member {info.filename!r} is a symlink", file=str(archive)
                        )
                zf.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                for m in members:
                    _safe_member(m.name, archive)
                    if not (m.isfile() or m.isdir()):
                        raise DataFormatError(
                            f"archive member {m.name!r} is a link or special file",
                            file=str(archive),
                        )
                tf.extractall(staging, members=members, filter="data")
        else:
            raise DataFormatError("not a zip or tar archive", file=str(archive))
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------------
# Staging.
# --------------------------------------------------------------------------------------------
def find_chexpert_dir(root: Path, csvs: tuple[str, ...] = ("train.csv",)) -> str:
    """The dataset folder name under ``root`` (``CheXpert-v1.0-small`` or ``CheXpert-v1.0``)."""
    root = Path(root)
    found = [d for d in CHEXPERT_DIRS if all((root / d / c).is_file() for c in csvs)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataFormatError(
            f"{root} holds {' and '.join(d + '/' for d in found)}; point data.chexpert.dir at a directory with one",
            file=str(root),
        )  # fmt: skip
    hint = ""
    if root.name in CHEXPERT_DIRS:
        hint = f" ({root} IS the dataset folder: set data.chexpert.dir to its parent {root.parent})"
    wanted = " and ".join(csvs)
    raise DataFormatError(
        f"no {' or '.join(d + '/' for d in CHEXPERT_DIRS)} with {wanted} in {root}{hint}. {CHEXPERT_HOWTO}",
        file=str(root),
    )


def _stage_synthetic(cfg: dict, work_dir: Path) -> Path:
    preset, seed = str(cfg.get("preset", "demo")), int(cfg.get("seed", 0))
    n_patients = cfg.get("n_patients")
    out = work_dir / "synthetic"
    stamp = synthetic.read_stamp(out)
    want_n = (
        synthetic.PRESETS[preset].n_patients
        if n_patients is None and preset in synthetic.PRESETS
        else n_patients
    )
    if (
        stamp is not None
        and stamp.get("generator_version") == synthetic.GENERATOR_VERSION
        and stamp.get("preset") == preset
        and stamp.get("seed") == seed
        and stamp.get("n_patients") == want_n
        and all((out / synthetic.DATASET_DIR / c).is_file() for c in CHEXPERT_CSVS)
    ):
        log.info(
            "synthetic dataset %s (preset %s, seed %d) already generated; reusing it",
            out,
            preset,
            seed,
        )
        return out
    return synthetic.generate_dataset(out, preset, seed, n_patients)


def _stage_chexpert(cfg: dict, work_dir: Path) -> Path:
    csvs = tuple(cfg.get("csv") or ("train.csv",))
    if cfg.get("dir"):
        root = Path(cfg["dir"]).expanduser()
        if not root.is_dir():
            raise DataFormatError(
                f"data.chexpert.dir {root} does not exist. {CHEXPERT_HOWTO}", file=str(root)
            )
        find_chexpert_dir(root, csvs)
        return root
    url, sha = cfg.get("url"), cfg.get("sha256")
    if not url:
        raise DataFormatError(
            f"CheXpert is not staged: data.chexpert.dir and data.chexpert.url are both unset. {CHEXPERT_HOWTO}"
        )
    if not sha:
        raise DataFormatError(
            f"data.chexpert.url is set but data.chexpert.sha256 is missing. {CHEXPERT_HOWTO}"
        )
    sha = _check_sha(sha)
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name or "chexpert-archive"
    archive = download(url, work_dir / "downloads" / name, sha)
    root = work_dir / "chexpert"
    stamp = root / _EXTRACT_STAMP
    if root.exists() and not (stamp.is_file() and stamp.read_text().strip() == sha):
        log.info("removing %s: extracted from a different archive or incomplete", root)
        shutil.rmtree(root)
    if not root.exists():
        extract(archive, root)
        stamp.write_text(sha + "\n")
    find_chexpert_dir(root, csvs)
    return root


def _stage_nih(cfg: dict) -> Path:
    if not cfg.get("dir"):
        raise DataFormatError(
            "NIH ChestX-ray14 is not staged: set data.nih.dir to the directory with Data_Entry_2017.csv and "
            "images*/ (download from https://nihcc.app.box.com/v/ChestXray-NIHCC)"
        )
    root = Path(cfg["dir"]).expanduser()
    missing = [] if (root / DATA_ENTRY).is_file() else [DATA_ENTRY]
    if not any(p.is_dir() for p in root.glob("images*")):
        missing.append("images*/")
    if missing:
        raise DataFormatError(f"data.nih.dir {root} lacks {', '.join(missing)}", file=str(root))
    return root


def stage_dataset(source: str, cfg: dict, work_dir: Path) -> Path:
    """Make the dataset available locally and return its root (the dir containing the data).

    ``cfg`` is the source's config block: ``synthetic`` {preset, seed}; ``chexpert`` {dir} or
    {url, sha256} (+ ``csv``); ``nih`` {dir}.
    """
    work_dir = Path(work_dir)
    if source == "synthetic":
        return _stage_synthetic(cfg, work_dir)
    if source == "chexpert":
        return _stage_chexpert(cfg, work_dir)
    if source == "nih":
        return _stage_nih(cfg)
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")


# --------------------------------------------------------------------------------------------
# Ingest.
# --------------------------------------------------------------------------------------------
def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def _concat(parts: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: [] for c in columns}, columns=list(columns))
    return pd.concat(parts, ignore_index=True)


def _chexpert_csvs(cfg: dict, root: Path, source: str) -> tuple[str, tuple[str, ...]]:
    """The dataset folder and its CSVs: ``data.chexpert.csv``, else train.csv (+ valid.csv)."""
    if source == "chexpert" and cfg.get("csv"):
        csvs = tuple(cfg["csv"])
        return find_chexpert_dir(root, csvs), csvs
    ds = find_chexpert_dir(root, ("train.csv",))
    return ds, tuple(c for c in CHEXPERT_CSVS if (root / ds / c).is_file())


def _read_source(source: str, cfg: dict, root: Path, on_bad_image: str, workers: int = 1) -> tuple:
    csv_hashes: dict[str, str] = {}
    if source == "nih":
        res = parse_nih(root, on_bad_image)
        csv_hashes[DATA_ENTRY] = sha256_file(root / DATA_ENTRY)
        boxes = pd.DataFrame(columns=list(BOX_COLUMNS))
        if (root / BBOX_LIST).is_file():
            boxes = parse_nih_boxes(root)
            csv_hashes[BBOX_LIST] = sha256_file(root / BBOX_LIST)
        return res, boxes, csv_hashes
    ds, csvs = _chexpert_csvs(cfg, root, source)
    results: list[ParseResult] = []
    errors = ErrorList(f"bad entries in {root / ds}")
    for name in csvs:
        p = root / ds / name
        try:
            results.append(
                parse_chexpert_csv(p, root, name.removesuffix(".csv"), on_bad_image, workers)
            )
        except DataFormatError as e:
            errors.add(e)
        csv_hashes[f"{ds}/{name}"] = sha256_file(p)
    errors.raise_if_any()
    meta = _concat([r.metadata for r in results], METADATA_COLUMNS)
    dup = meta["image_id"].duplicated()
    for image_id in meta.loc[dup, "image_id"]:
        errors.add(f"image {image_id!r} is listed in more than one CSV of {root / ds}")
    errors.raise_if_any()
    res = ParseResult(
        finalize_metadata(meta), _concat([r.quarantine for r in results], QUARANTINE_COLUMNS)
    )
    box_csv = root / ds / synthetic.BOX_CSV
    boxes = pd.DataFrame(columns=list(BOX_COLUMNS))
    if box_csv.is_file():
        boxes = parse_chexpert_boxes(box_csv)
        csv_hashes[f"{ds}/{synthetic.BOX_CSV}"] = sha256_file(box_csv)
    return res, boxes, csv_hashes


def _portable_root(root: Path) -> str:
    """The dataset root relative to the working directory when inside it, else absolute.

    Keeps ``ingest.json`` (and the ``source_sha256`` of every HDF5 derived from it) identical
    between two checkouts of the same workflow, which between-workflow caching relies on.
    """
    try:
        return str(root.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(root)


def _source_info(source: str, cfg: dict) -> dict:
    if source == "synthetic":
        return {
            "preset": cfg.get("preset", "demo"),
            "seed": int(cfg.get("seed", 0)),
            "generator_version": synthetic.GENERATOR_VERSION,
        }
    if source == "chexpert" and not cfg.get("dir"):
        return {
            "url": _redact(cfg["url"]),
            "sha256": cfg["sha256"],
            "csv": list(cfg.get("csv") or CHEXPERT_CSVS),
        }
    return {k: v for k, v in cfg.items() if k in ("dir", "csv")}


def ingest(
    source: str,
    cfg: dict,
    work_dir: Path,
    out_metadata: Path,
    out_boxes: Path,
    out_manifest: Path,
    out_quarantine: Path,
    on_bad_image: str,
    workers: int = 1,
) -> None:
    """Stage ``source`` and write ``metadata.csv``, ``boxes.csv``, ``ingest.json``, quarantine CSV.

    ``ingest.json`` records the source, the absolute dataset root, the sha256 of every CSV read,
    ``images_sha256`` (sha256 of the sorted ``path`` list, one path + newline each) and counts.
    Boxes of images not in the metadata (absent or quarantined) are dropped and counted.
    """
    root = stage_dataset(source, cfg, Path(work_dir)).resolve()
    res, boxes, csv_hashes = _read_source(source, cfg, root, on_bad_image, workers)
    meta = res.metadata
    known = boxes["image_id"].isin(set(meta["image_id"]))
    if (~known).any():
        log.warning("ingest: dropping %d boxes of images not in the metadata", int((~known).sum()))
    dropped = int((~known).sum())
    boxes = boxes.loc[known].reset_index(drop=True)
    if len(res.quarantine):
        log.warning(
            "ingest: %d images quarantined (on_bad_image=skip) -> %s",
            len(res.quarantine),
            out_quarantine,
        )
    paths_blob = "".join(p + "\n" for p in sorted(meta["path"])).encode()
    counts = {
        "images": len(meta),
        "frontal": int((meta["view"] == "Frontal").sum()),
        "lateral": int((meta["view"] == "Lateral").sum()),
        "patients": int(meta["patient"].nunique()),
        "by_source_split": {
            k: int(v) for k, v in meta["source_split"].value_counts().sort_index().items()
        },
        "positive": {o: int((meta[o] == 1.0).sum()) for o in OBSERVATIONS},
        "uncertain": {o: int((meta[o] == -1.0).sum()) for o in OBSERVATIONS},
        "boxes": len(boxes),
        "boxes_dropped": dropped,
        "quarantined": len(res.quarantine),
    }
    _write_csv(meta, Path(out_metadata))
    _write_csv(boxes, Path(out_boxes))
    _write_csv(res.quarantine, Path(out_quarantine))
    write_json_atomic(
        Path(out_manifest),
        {
            "source": source,
            "source_config": _source_info(source, cfg),
            "root": _portable_root(root),
            "csv_sha256": csv_hashes,
            "images_sha256": hashlib.sha256(paths_blob).hexdigest(),
            "on_bad_image": on_bad_image,
            "counts": counts,
        },
    )
    log.info(
        "ingest %s: %d images (%d frontal), %d boxes -> %s",
        source,
        counts["images"],
        counts["frontal"],
        len(boxes),
        out_metadata,
    )


def read_metadata(path: Path) -> pd.DataFrame:
    """Read ``data/metadata.csv`` back with the contract's dtypes (blank labels -> NaN)."""
    path = Path(path)
    df = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        na_values={c: [""] for c in ("age", *OBSERVATIONS)},
    )
    if tuple(df.columns) != METADATA_COLUMNS:
        missing = [c for c in METADATA_COLUMNS if c not in df.columns]
        unexpected = [c for c in df.columns if c not in METADATA_COLUMNS]
        raise DataFormatError(
            f"wrong columns: missing {missing}, unexpected {unexpected} (or wrong order)",
            file=str(path),
            row=1,
        )
    return finalize_metadata(df)
