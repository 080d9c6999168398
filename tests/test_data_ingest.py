"""Staging and ingest: URL downloads against a local Range-capable server, extraction, outputs."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from medmark.data import synthetic
from medmark.data.chexpert import METADATA_COLUMNS
from medmark.data.ingest import download, extract, ingest, read_metadata, stage_dataset
from medmark.errors import DataFormatError
from medmark.io import sha256_file

DS = "CheXpert-v1.0-small"


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path; honours ``Range: bytes=N-`` unless told not to."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append({"path": self.path, "range": rng})
        data = srv.payload
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        srv.bytes_sent += len(body)  # counted before the write: the client may finish first
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Keep the test output quiet."""


def _zip_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted((root / DS).rglob("*")):
            zf.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate_dataset(tmp_path_factory.mktemp("src"), "tiny", 0, n_patients=6)


@pytest.fixture(scope="module")
def payload(dataset: Path) -> bytes:
    return _zip_dir(dataset)


@pytest.fixture
def server(payload: bytes) -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.payload, srv.requests, srv.bytes_sent, srv.ignore_range = payload, [], 0, False
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join()


def _url(srv: ThreadingHTTPServer, name: str = "chexpert.zip") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{name}?token=secret"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_http_download_ok(server: ThreadingHTTPServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "chexpert.zip"
    assert download(_url(server), dest, _sha(payload), progress=False) == dest
    assert dest.read_bytes() == payload
    assert not dest.with_name("chexpert.zip.part").exists()
    assert [r["range"] for r in server.requests] == [None]
    # an existing, verified file is reused without a request
    download(_url(server), dest, _sha(payload), progress=False)
    assert len(server.requests) == 1


def test_http_wrong_sha_leaves_nothing(
    server: ThreadingHTTPServer, payload: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "chexpert.zip"
    wrong = "0" * 64
    with pytest.raises(DataFormatError) as e:
        download(_url(server), dest, wrong, progress=False)
    msg = str(e.value)
    assert f"expected {wrong}" in msg and f"got {_sha(payload)}" in msg and "secret" not in msg
    assert not dest.exists() and not (tmp_path / "chexpert.zip.part").exists()
    assert list(tmp_path.iterdir()) == []


def test_http_resume_uses_range(
    server: ThreadingHTTPServer, payload: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "chexpert.zip"
    half = len(payload) // 2
    (tmp_path / "chexpert.zip.part").write_bytes(payload[:half])
    download(_url(server), dest, _sha(payload), progress=True)
    assert dest.read_bytes() == payload
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert server.bytes_sent == len(payload) - half


def test_http_server_ignoring_range_restarts(
    server: ThreadingHTTPServer, payload: bytes, tmp_path: Path
) -> None:
    server.ignore_range = True
    dest = tmp_path / "chexpert.zip"
    (tmp_path / "chexpert.zip.part").write_bytes(payload[:100])
    download(_url(server), dest, _sha(payload), progress=False)
    assert dest.read_bytes() == payload


def test_http_connection_error_is_reported(
    server: ThreadingHTTPServer, payload: bytes, tmp_path: Path
) -> None:
    server.shutdown()
    server.server_close()
    with pytest.raises(RuntimeError, match="download of http://127.0.0.1"):
        download(_url(server), tmp_path / "x.zip", _sha(payload), progress=False)


def test_file_url_and_resume(payload: bytes, tmp_path: Path) -> None:
    src = tmp_path / "src.zip"
    src.write_bytes(payload)
    dest = tmp_path / "out" / "a.zip"
    download(src.as_uri(), dest, _sha(payload), progress=False)
    assert dest.read_bytes() == payload
    dest2 = tmp_path / "out" / "b.zip"
    (tmp_path / "out" / "b.zip.part").write_bytes(payload[:1000])
    download(src.as_uri(), dest2, _sha(payload), progress=False)
    assert dest2.read_bytes() == payload
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        download("ftp://example.org/x.zip", tmp_path / "c.zip", _sha(payload))
    with pytest.raises(ValueError, match="64 hex"):
        download(src.as_uri(), tmp_path / "c.zip", "abc")


def test_stage_and_ingest_chexpert_from_url(
    server: ThreadingHTTPServer, payload: bytes, dataset: Path, tmp_path: Path
) -> None:
    cfg = {"url": _url(server), "sha256": _sha(payload)}
    work = tmp_path / "work"
    out = {
        k: tmp_path / "data" / f
        for k, f in (
            ("m", "metadata.csv"),
            ("b", "boxes.csv"),
            ("j", "ingest.json"),
            ("q", "quarantine.csv"),
        )
    }
    ingest("chexpert", cfg, work, out["m"], out["b"], out["j"], out["q"], "error")
    root = work / "chexpert"
    assert (root / DS / "train.csv").read_bytes() == (dataset / DS / "train.csv").read_bytes()
    man = json.loads(out["j"].read_text())
    assert man["source"] == "chexpert" and man["root"] == str(root.resolve())
    assert "secret" not in out["j"].read_text()
    assert man["source_config"]["sha256"] == _sha(payload)
    meta = read_metadata(out["m"])
    n_rows = sum(len(pd.read_csv(dataset / DS / f)) for f in ("train.csv", "valid.csv"))
    assert len(meta) == n_rows == man["counts"]["images"]
    assert man["counts"]["boxes"] == len(pd.read_csv(out["b"])) > 0
    # staging again reuses the verified archive and the extraction
    n_req = len(server.requests)
    assert stage_dataset("chexpert", cfg, work) == root
    assert len(server.requests) == n_req


def test_missing_chexpert_explains_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError) as e:
        stage_dataset("chexpert", {"dir": None, "url": None, "sha256": None}, tmp_path)
    msg = str(e.value)
    for needle in (
        "data.chexpert.dir",
        "data.chexpert.url",
        "data.chexpert.sha256",
        "stanfordaimi",
        "CheXpert-v1.0-small/",
    ):
        assert needle in msg, needle
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        DataFormatError,
        match=r"no CheXpert-v1.0-small/ or CheXpert-v1.0/ or CheXpert-v1.0-small-xmark/ with train.csv in .*empty",
    ):
        stage_dataset("chexpert", {"dir": str(empty)}, tmp_path)
    with pytest.raises(DataFormatError, match="does not exist"):
        stage_dataset("chexpert", {"dir": str(tmp_path / "nope")}, tmp_path)
    with pytest.raises(DataFormatError, match="sha256 is missing"):
        stage_dataset("chexpert", {"url": "http://127.0.0.1:1/x.zip"}, tmp_path)
    with pytest.raises(DataFormatError, match="data.nih.dir"):
        stage_dataset("nih", {"dir": None}, tmp_path)
    with pytest.raises(ValueError, match="data.source"):
        stage_dataset("mimic", {}, tmp_path)


def test_dir_pointing_at_dataset_folder_gets_a_hint(dataset: Path) -> None:
    with pytest.raises(DataFormatError, match="IS the dataset folder"):
        stage_dataset("chexpert", {"dir": str(dataset / DS)}, dataset)
    assert stage_dataset("chexpert", {"dir": str(dataset)}, dataset) == dataset


def test_extract_rejects_traversal(tmp_path: Path) -> None:
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "boom")
    with pytest.raises(DataFormatError, match="outside the target"):
        extract(bad_zip, tmp_path / "x" / "out")
    assert not (tmp_path / "x" / "evil.txt").exists() and not (tmp_path / "x" / "out").exists()
    assert not [p for p in (tmp_path / "x").iterdir()]  # no staging folder left
    for name, kind in (("/abs/evil.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        bad_tar = tmp_path / "bad.tar.gz"
        with tarfile.open(bad_tar, "w:gz") as tf:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tf.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        with pytest.raises(DataFormatError, match="outside the target|link or special"):
            extract(bad_tar, tmp_path / "y")
        assert not (tmp_path / "y").exists()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"nope")
    with pytest.raises(DataFormatError, match="not a zip or tar"):
        extract(junk, tmp_path / "z")


def test_extract_tar_ok(dataset: Path, tmp_path: Path) -> None:
    arc = tmp_path / "ds.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(dataset / DS, arcname=DS)
    out = extract(arc, tmp_path / "out")
    assert (out / DS / "train.csv").read_bytes() == (dataset / DS / "train.csv").read_bytes()


def _outs(d: Path) -> tuple[Path, Path, Path, Path]:
    return d / "metadata.csv", d / "boxes.csv", d / "ingest.json", d / "quarantine.csv"


def test_ingest_synthetic_outputs(tmp_path: Path) -> None:
    work = tmp_path / "data"
    m, b, j, q = _outs(work)
    cfg = {"preset": "tiny", "seed": 0, "n_patients": 6}
    ingest("synthetic", cfg, work, m, b, j, q, "error")
    root = (work / "synthetic").resolve()
    man = json.loads(j.read_text())
    assert man["root"] == str(root) and man["source"] == "synthetic"
    assert man["source_config"] == {
        "preset": "tiny",
        "seed": 0,
        "generator_version": synthetic.GENERATOR_VERSION,
    }
    assert set(man["csv_sha256"]) == {
        f"{DS}/train.csv",
        f"{DS}/valid.csv",
        f"{DS}/{synthetic.BOX_CSV}",
    }
    for rel, sha in man["csv_sha256"].items():
        assert sha256_file(root / rel) == sha
    meta = read_metadata(m)
    assert tuple(meta.columns) == METADATA_COLUMNS
    blob = "".join(p + "\n" for p in sorted(meta["path"])).encode()
    assert man["images_sha256"] == _sha(blob)
    assert man["counts"]["images"] == len(meta) and man["counts"]["patients"] == 6
    assert man["counts"]["frontal"] + man["counts"]["lateral"] == len(meta)
    assert set(meta["source_split"]) == {"train", "valid"}
    assert q.read_text() == "path,csv,line,reason\n"
    boxes = pd.read_csv(b)
    assert list(boxes.columns) == ["image_id", "finding", "x", "y", "w", "h"]
    assert set(boxes["image_id"]) <= set(meta["image_id"])
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no temp files left
    # blank labels stay blank and -1 stays -1 through the CSV round trip
    raw = pd.concat(
        [pd.read_csv(root / DS / f) for f in ("train.csv", "valid.csv")], ignore_index=True
    )
    pd.testing.assert_series_equal(
        raw["Pleural Effusion"].rename(None),
        meta["Pleural Effusion"].rename(None),
        check_index=False,
    )
    # second ingest reuses the generated dataset
    mtime = (root / DS / "train.csv").stat().st_mtime_ns
    ingest("synthetic", cfg, work, m, b, j, q, "error")
    assert (root / DS / "train.csv").stat().st_mtime_ns == mtime


def test_ingest_quarantine_and_error(dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    boxes = pd.read_csv(root / DS / synthetic.BOX_CSV)
    victim = boxes.iloc[0]["Image Index"]
    (root / victim).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    m, b, j, q = _outs(out)
    with pytest.raises(DataFormatError, match="unreadable image"):
        ingest("chexpert", {"dir": str(root)}, out, m, b, j, q, "error")
    assert not out.exists() or not any(out.iterdir())
    ingest("chexpert", {"dir": str(root)}, out, m, b, j, q, "skip")
    quar = pd.read_csv(q)
    assert list(quar["path"]) == [victim] and quar.iloc[0]["line"] >= 2
    meta = read_metadata(m)
    victim_id = re.sub(r"^CheXpert-v1\.0-small/(train|valid)/|\.jpg$", "", victim)
    assert victim_id not in set(meta["image_id"])
    man = json.loads(j.read_text())
    assert man["counts"]["quarantined"] == 1
    assert man["counts"]["boxes_dropped"] == int((boxes["Image Index"] == victim).sum())
    assert victim_id not in set(pd.read_csv(b)["image_id"])


def test_ingest_nih(tmp_path: Path) -> None:
    nih = tmp_path / "nih"
    (nih / "images" / "sub").mkdir(parents=True)
    Image.new("L", (30, 20), 5).save(nih / "images" / "sub" / "00000001_000.png")
    (nih / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        "00000001_000.png,Effusion,0,1,60,F,AP\n"
    )
    out = tmp_path / "out"
    m, b, j, q = _outs(out)
    ingest("nih", {"dir": str(nih)}, out, m, b, j, q, "error")
    meta = read_metadata(m)
    assert (
        meta.iloc[0]["Pleural Effusion"] == 1.0
        and meta.iloc[0]["path"] == "images/sub/00000001_000.png"
    )
    assert (meta.iloc[0]["width"], meta.iloc[0]["height"]) == (30, 20)
    assert list(json.loads(j.read_text())["csv_sha256"]) == ["Data_Entry_2017.csv"]
    assert pd.read_csv(b).empty
    (nih / "images").rename(nih / "pics")
    with pytest.raises(DataFormatError, match=r"lacks images\*/"):
        ingest("nih", {"dir": str(nih)}, out, m, b, j, q, "error")


def test_ingest_counts_only_decodable_images(dataset: Path, tmp_path: Path) -> None:
    """A JPEG truncated after its header is quarantined at ingest, not counted as a frontal.

    Before the fix ingest read only headers: ``ingest.json`` counted the image as a usable
    frontal, no quarantine entry was written, and preprocess failed (or wrote a second
    quarantine file of its own).
    """
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    meta0 = pd.read_csv(root / DS / "train.csv")
    victim = meta0.loc[meta0["Frontal/Lateral"] == "Frontal", "Path"].iloc[0]
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    m, b, j, q = _outs(out)
    ingest("chexpert", {"dir": str(root)}, out, m, b, j, q, "skip")
    quar = pd.read_csv(q)
    assert list(quar["path"]) == [victim] and "truncated" in quar.iloc[0]["reason"]
    man = json.loads(j.read_text())
    meta = read_metadata(m)
    assert man["counts"]["frontal"] == int((meta["view"] == "Frontal").sum())
    n_frontal = int((pd.concat([pd.read_csv(root / DS / f) for f in ("train.csv", "valid.csv")])
                     ["Frontal/Lateral"] == "Frontal").sum())  # fmt: skip
    assert man["counts"]["frontal"] == n_frontal - 1 and man["counts"]["quarantined"] == 1


def test_release_tree_is_ingestible(tmp_path: Path) -> None:
    """The project ingests its own release (``CheXpert-v1.0-small-xmark/``) with source chexpert:
    same ids, labels and pixels as the release HDF5.

    Before the fix the folder finder and the path pattern refused the tree.
    """
    import numpy as np

    from medmark.data.h5 import read_images, read_table
    from medmark.data.labels import OBSERVATIONS
    from medmark.data.preprocess import load_resized
    from tests.test_xmark_release import R, _release
    from tests.test_xmark_release import dataset as release_dataset

    info = _release(release_dataset.__wrapped__(tmp_path))
    tree = Path(info["image_tree"])
    out = tmp_path / "received"
    m, b, j, q = _outs(out)
    ingest("chexpert", {"dir": str(tree.parent)}, out, m, b, j, q, "error")
    meta = read_metadata(m)
    rel = read_table(info["release_h5"])
    assert list(meta["image_id"]) == list(rel["image_id"])
    for obs in OBSERVATIONS:
        np.testing.assert_array_equal(meta[obs].to_numpy(), rel[obs].to_numpy(np.float64))
    released = read_images(info["release_h5"], rel["row"].to_numpy())
    for k, path in enumerate(meta["path"]):
        np.testing.assert_array_equal(load_resized(tree.parent / path, R), released[k])
    assert json.loads(j.read_text())["counts"]["quarantined"] == 0
