"""MedLocker stages and CLI end to end on a small synthetic HDF5 and an untrained classifier."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medmark.cli import main
from medmark.data.h5 import H5ImageWriter, read_images, read_table
from medmark.data.labels import OBSERVATIONS
from medmark.methods.medlocker.logo import write_default_logo
from medmark.methods.medlocker.placement import boxes_in_pixels, footprint_overlap, forbidden_map
from medmark.models import build_classifier, save_classifier
from medmark.stages import medlocker as st

R, N = 32, 8
TASK = {"target_observation": "Pleural Effusion", "uncertainty": "u_zeros", "target_class": 1}
CFG = {
    "split": "test",
    "max_images": None,
    "seed": 0,
    "logo_scale": 0.25,
    "fallback_scales": [0.5],
    "on_infeasible": "skip",
    "boxes": "lesion",
    "box_margin": 1,
    "saliency_top_frac": 0.1,
    "optimizer": {"population": 6, "generations": 1, "hops": 1, "max_queries": 40},
    "attacks": {"crop_box": [0.1, 0.1, 0.9, 0.85], "resize": 0.5, "jpeg_quality": 50},
}


@pytest.fixture(scope="module")
def locked_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(0)
    ids = [f"patient{i:05d}/study1/view1_frontal" for i in range(N)]
    with H5ImageWriter(d / "prep.h5", N, R) as w:
        for i, iid in enumerate(ids):
            labels = np.full(len(OBSERVATIONS), np.nan, np.float32)
            labels[OBSERVATIONS.index("Pleural Effusion")] = float(i % 2)
            w.append(rng.integers(0, 255, (R, R), dtype=np.uint8), iid, iid[:12], "test", labels)
        w.close()
    meta = pd.DataFrame(
        {"image_id": ids, "width": 64, "height": 128, "sex": "Female", "age": "60"}
        | {"view": "Frontal", "ap_pa": "PA"}
        | {obs: "" for obs in OBSERVATIONS}
    )
    meta["Pleural Effusion"] = [f"{float(i % 2):.1f}" for i in range(N)]
    meta.to_csv(d / "metadata.csv", index=False)
    # image 0: a box over the whole image (infeasible -> skipped); image 1: a box on the left half
    pd.DataFrame(
        {
            "image_id": [ids[0], ids[1]],
            "finding": "x",
            "x": [0, 0],
            "y": [0, 0],
            "w": [64, 32],
            "h": [128, 128],
        }
    ).to_csv(d / "boxes.csv", index=False)
    save_classifier(build_classifier("resnet18", seed=0), d / "model.pt")
    write_default_logo(d / "logo.png", side=32)
    rel, own = d / "release", d / "owner"
    out = {
        "locked.h5": rel / "locked.h5",
        "cert.json": rel / "certificate.json",
        "pub.pem": rel / "public_key.pem",
        "random.h5": own / "random.h5",
        "params.csv": own / "params.csv",
        "queries.csv": own / "queries.csv",
        "owner.json": own / "owner.json",
    }
    st.lock_stage(
        lock="medlocker",
        inputs={
            "prep": str(d / "prep.h5"),
            "boxes": str(d / "boxes.csv"),
            "metadata": str(d / "metadata.csv"),
            "model": str(d / "model.pt"),
            "logo": str(d / "logo.png"),
            "source_id": "surrogate",
            "input_resolution": R,
            "code": "0" * 64,
        },
        task=TASK,
        cfg=CFG,
        image_tree=True,
        device="cpu",
        threads=1,
        release_dir=rel,
        owner_dir=own,
    )
    return d, ids, out


def test_lock_stage_keeps_off_lesions_and_logs_queries(locked_run):
    d, ids, out = locked_run
    params = pd.read_csv(out["params.csv"]).set_index("image_id")
    assert params.loc[ids[0], "status"] == "skipped"
    assert (params.drop(ids[0])["status"] == "locked").all()
    assert (params.drop(ids[0])["queries"] <= 40).all()
    boxes = boxes_in_pixels(pd.read_csv(d / "boxes.csv"), pd.read_csv(d / "metadata.csv"), R)
    p = params.loc[ids[1]]
    forb = forbidden_map(boxes[ids[1]], (R, R), 1.0)
    assert (
        footprint_overlap(forb, int(p["u"]), int(p["v"]), int(p["logo_h"]), int(p["logo_w"])) == 0
    )
    assert int(p["u"]) >= 16 + 1  # right of the left-half box and its margin
    prep, locked = read_images(d / "prep.h5", range(N)), read_images(out["locked.h5"], range(N))
    assert np.array_equal(prep[0], locked[0])  # the skipped image is released unchanged
    assert not np.array_equal(prep[1], locked[1])
    q = pd.read_csv(out["queries.csv"])
    assert set(q["image_id"]) == set(ids[1:])


def test_lock_release_follows_the_release_conventions(locked_run):
    """The lock's release goes through the release writer (methods/lock.py): locked HDF5 and
    CheXpert tree in release/, labels unchanged; the owner's secret outside it, owner.json last
    naming the sha256 of what it lists."""
    from medmark.io import sha256_file

    d, ids, out = locked_run
    rel, own = out["locked.h5"].parent, out["owner.json"].parent
    tree = rel / "CheXpert-v1.0-small-medlocker"
    csv = pd.read_csv(tree / "train.csv")
    assert len(csv) == N and csv["Path"].str.startswith(f"{tree.name}/train/").all()
    png = np.asarray(Image.open(rel / csv["Path"].iloc[1]))
    assert np.array_equal(png, read_images(out["locked.h5"], [1])[0])
    assert np.array_equal(
        read_table(out["locked.h5"])[list(OBSERVATIONS)].to_numpy(np.float32),
        read_table(d / "prep.h5")[list(OBSERVATIONS)].to_numpy(np.float32),
        equal_nan=True,
    )
    shipped = {p.name for p in rel.iterdir()}
    assert shipped == {"locked.h5", "certificate.json", "public_key.pem", tree.name}
    owner = json.loads(out["owner.json"].read_text())
    assert owner["family"] == "lock" and owner["verification_test"] == "certificate"
    assert owner["skipped_ids"] == [ids[0]] and owner["locked_ids"] == ids[1:]
    assert owner["release_sha256"] == sha256_file(out["locked.h5"])
    assert owner["published"]["certificate"]["sha256"] == sha256_file(out["cert.json"])
    for entry in (*owner["secret"].values(), owner["params"], *owner["owner_images"].values()):
        if "file" in entry:
            assert entry["sha256"] == sha256_file(own / entry["file"])
    assert owner["secret"]["restore"]["n_packages"] == N - 1
    assert not any(p.suffix in (".pem", ".hex") and "signing" in p.name for p in rel.rglob("*"))


def test_evaluate_attacks_examples(locked_run, tmp_path):
    d, ids, out = locked_run
    lock = {
        "locked": str(out["locked.h5"]),
        "random": str(out["random.h5"]),
        "params": str(out["params.csv"]),
        "model": str(d / "model.pt"),
    }
    models, res = {"surrogate": str(d / "model.pt")}, {"surrogate": R}
    df = st.evaluate_stage(
        prep_h5=d / "prep.h5",
        locks={"surrogate": lock},
        models=models,
        input_resolutions=res,
        boxes_csv=d / "boxes.csv",
        metadata_csv=d / "metadata.csv",
        device="cpu",
        threads=1,
        out_csv=tmp_path / "m.csv",
        out_md=tmp_path / "m.md",
        out_json=tmp_path / "s.json",
    )
    assert set(df["placement"]) == {"clean", "optimised", "random"}
    assert df["white_box"].all()  # the only target is the source itself
    s = json.loads((tmp_path / "s.json").read_text())["surrogate"]
    assert s["lesion_overlap_pixels_total"] == 0 and s["n_skipped"] == 1
    assert s["psnr_outside_min"] == math.inf and s["ssim_outside_min"] == pytest.approx(1.0)
    assert "surrogate" in (tmp_path / "m.md").read_text()
    att = st.attacks_stage(
        prep_h5=d / "prep.h5",
        lock=lock,
        logo_path=d / "logo.png",
        models=models,
        input_resolutions=res,
        cfg=CFG,
        finetune_train={"epochs": 1, "batch_size": 4},
        device="cpu",
        threads=1,
        out_csv=tmp_path / "a.csv",
        out_md=tmp_path / "a.md",
    )
    assert att["attack"].str.startswith("inpaint").sum() == 2
    assert att["attack"].str.startswith("fine-tune").sum() == 1
    clean_cols = ["accuracy_clean_attacked", "auroc_clean_attacked"]
    assert att["accuracy_clean_attacked"].notna().all() and set(clean_cols) <= set(att.columns)
    assert "clean, attacked" in (tmp_path / "a.md").read_text()
    st.examples_stage(
        prep_h5=d / "prep.h5",
        lock=lock,
        boxes_csv=d / "boxes.csv",
        metadata_csv=d / "metadata.csv",
        n=2,
        out_png=tmp_path / "e.png",
    )
    assert (tmp_path / "e.png").stat().st_size > 1000


def _verify(d, out, release, *extra):
    return main(
        [
            "certificate",
            "verify",
            "--certificate",
            str(out["cert.json"]),
            "--public-key",
            str(out["pub.pem"]),
            "--release",
            str(release),
            *extra,
        ]
    )


def test_certificate_verify_cli(locked_run, tmp_path, capsys):
    d, ids, out = locked_run
    logo = ["--originals", str(d / "prep.h5"), "--logo", str(d / "logo.png")]
    assert _verify(d, out, out["locked.h5"], *logo) == 0
    # one changed pixel in a copy
    table = read_table(out["locked.h5"])
    imgs = read_images(out["locked.h5"], table["row"])
    imgs[3, 4, 4] ^= 1
    with H5ImageWriter(tmp_path / "copy.h5", N, R) as w:
        for k, r in enumerate(table.itertuples(index=False)):
            w.append(
                imgs[k],
                r.image_id,
                r.patient,
                r.split,
                table.loc[k, list(OBSERVATIONS)].to_numpy(np.float32),
            )
        w.close()
    assert _verify(d, out, tmp_path / "copy.h5") == 1
    assert ids[3] in capsys.readouterr().err
    # an edited certificate and a certificate checked with another owner's key
    cert = json.loads(out["cert.json"].read_text())
    cert["records"][0]["alpha"] += 0.01
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cert))
    assert (
        main(
            [
                "certificate",
                "verify",
                "--certificate",
                str(bad),
                "--public-key",
                str(out["pub.pem"]),
                "--release",
                str(out["locked.h5"]),
            ]
        )
        == 1
    )
    from medmark.methods.medlocker.certificate import new_signing_key, write_public_key

    write_public_key(tmp_path / "other.pem", new_signing_key().public_key())
    assert (
        main(
            [
                "certificate",
                "verify",
                "--certificate",
                str(out["cert.json"]),
                "--public-key",
                str(tmp_path / "other.pem"),
                "--release",
                str(out["locked.h5"]),
            ]
        )
        == 1
    )
    assert "signature does not match" in capsys.readouterr().err
    assert (
        main(
            [
                "certificate",
                "verify",
                "--certificate",
                str(tmp_path / "nope.json"),
                "--public-key",
                str(out["pub.pem"]),
                "--release",
                str(out["locked.h5"]),
            ]
        )
        == 2
    )


def test_unlock_cli_restores_bytes_and_refuses_bad_keys_and_packages(locked_run, tmp_path, capsys):
    d, ids, out = locked_run
    owner = d / "owner"
    args = ["unlock", "--locked", str(out["locked.h5"]), "--packages", str(owner / "restore")]
    assert (
        main([*args, "--key", str(owner / "restore_key.hex"), "--out", str(tmp_path / "r.h5")]) == 0
    )
    assert (
        read_images(tmp_path / "r.h5", range(N)).tobytes()
        == read_images(d / "prep.h5", range(N)).tobytes()
    )
    wrong = tmp_path / "wrong.hex"
    wrong.write_text("11" * 32)
    assert main([*args, "--key", str(wrong), "--out", str(tmp_path / "w.h5")]) == 1
    assert "wrong key" in capsys.readouterr().err and not (tmp_path / "w.h5").exists()
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    for f in (owner / "restore").iterdir():
        (pkgs / f.name).write_bytes(f.read_bytes())
    victim = sorted(pkgs.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-3])
    key = ["--key", str(owner / "restore_key.hex")]
    assert (
        main(
            [
                "unlock",
                "--locked",
                str(out["locked.h5"]),
                "--packages",
                str(pkgs),
                *key,
                "--out",
                str(tmp_path / "t.h5"),
            ]
        )
        == 1
    )
    assert "tampered or truncated" in capsys.readouterr().err
    short = tmp_path / "short.hex"
    short.write_text("11" * 8)
    assert main([*args, "--key", str(short), "--out", str(tmp_path / "s.h5")]) == 2


def test_attack_table_clean_column_transforms_the_clean_images(tmp_path):
    """The clean column of every transform is the model on the *clean* images under that
    transform: a toy model right on every clean image and wrong on every locked one must read
    1.0 there and 0.0 in the locked column, before and after each transform."""
    n, r = 4, 16
    y = np.array([0, 1, 0, 1])
    clean = np.where(y[:, None, None] == 1, 200, 40).astype(np.uint8) * np.ones((n, r, r), np.uint8)
    locked = (255 - clean).astype(np.uint8)  # inverted: the toy model is wrong on every image
    params = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "status": ["locked", "locked", "locked", "skipped"],
            "u": 4,
            "v": 4,
            "logo_h": 8,
            "logo_w": 8,
        }
    ).set_index("image_id")
    write_default_logo(tmp_path / "logo.png", side=16)
    pairs = st.attack_pairs(
        clean,
        locked,
        params,
        st.load_logo(tmp_path / "logo.png"),
        {"crop_box": [0.1, 0.1, 0.9, 0.85], "resize": 0.5, "jpeg_quality": 50},
    )
    assert set(pairs) >= {st.NO_ATTACK, "crop to lungs", "resize x0.5", "JPEG q50"}
    calls = []

    def predict(model, imgs):
        calls.append(imgs)
        p1 = imgs.reshape(len(imgs), -1).mean(axis=1) / 255.0
        return np.stack([1 - p1, p1], axis=1)

    rows = pd.DataFrame(st.attack_rows(["toy"], pairs, y, predict))
    assert len(rows) == len(pairs)
    for col in ("accuracy_clean", "accuracy_clean_attacked", "auroc_clean_attacked"):
        assert (rows[col] == 1.0).all(), (col, rows[["attack", col]])
    for col in ("accuracy_before", "accuracy", "auroc"):
        assert (rows[col] == 0.0).all(), (col, rows[["attack", col]])
    md = st.attacks_markdown(rows)
    assert "| crop to lungs | toy | 1.000 | 1.000 | 0.000 | 0.000 |" in md
