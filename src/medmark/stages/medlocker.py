"""MedLocker stages (Pu, Wei, Zhao, Fu, arXiv 2303.09858; docs/methods/medlocker.md): lock a split
against a source model (the registered lock, :class:`medmark.methods.medlocker.method.MedLocker`,
through :func:`medmark.methods.lock.write_locked_release`), evaluate clean vs locked (white-box and transfer matrix, optimised vs
random placement), attack the lock, and draw examples.

Every stage reads the preprocessed HDF5 (``results/prep``), the ingest's ``boxes.csv`` and
``metadata.csv`` and trained classifiers (the surrogate, the clean Ind-M suspects); nothing here
knows Snakemake.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmark.data.h5 import read_images, read_table
from medmark.data.labels import OBSERVATIONS, task_labels
from medmark.evaluation import classification_metrics
from medmark.io import atomic_path, write_json_atomic, write_text_atomic
from medmark.methods.lock import write_locked_release
from medmark.methods.medlocker import metrics as mx
from medmark.methods.medlocker.logo import Logo, load_logo
from medmark.methods.medlocker.method import BOX_MODES, lesion_boxes
from medmark.methods.medlocker.placement import boxes_in_pixels, footprint_overlap, forbidden_map
from medmark.methods.registry import lock_class
from medmark.models import load_classifier
from medmark.runtime import resolve_device, seed_everything, set_threads
from medmark.train import TrainConfig, predict_proba, train_classifier

__all__ = ["BOX_MODES", "lesion_boxes"]  # re-exported: they live in methods/medlocker/method.py

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- lock


def lock_stage(
    *,
    lock: str,
    inputs: Mapping[str, Any],
    task: Mapping[str, Any],
    cfg: Mapping[str, Any],
    image_tree: bool,
    device: str,
    threads: int,
    release_dir: str | Path,
    owner_dir: str | Path,
) -> dict[str, Any]:
    """Lock ``cfg["split"]`` with the registered inference-time lock ``lock``
    (:func:`medmark.methods.registry.lock_class`) and write its release and the owner's secret
    (:func:`medmark.methods.lock.write_locked_release`). ``inputs``: the lock rule's files
    (``prep``, ``metadata``, ...) and the lock's own keys (MedLocker: ``source_id``,
    ``input_resolution``, ``code``). Returns ``owner.json``."""
    set_threads(threads)
    seed_everything(int(cfg["seed"]))
    dev = resolve_device(device)
    wl = lock_class(lock)(cfg)
    table = read_table(inputs["prep"])
    y = task_labels(
        table[list(OBSERVATIONS)].to_numpy(), task["target_observation"], task["uncertainty"]
    )
    rows = wl.select(table.assign(y=y))
    wl.prepare(inputs, dev, rows)
    owner = write_locked_release(
        inputs["prep"],
        release_dir,
        owner_dir,
        lock=wl,
        table=rows,
        image_tree=image_tree,
        metadata_csv=inputs.get("metadata"),
    )
    params = pd.read_csv(Path(owner_dir) / "params.csv")
    done = params[params["status"] == "locked"]
    log.info(
        "locked %d/%d images against %s: %d flipped, %.0f queries and %.2f s per image",
        len(done),
        len(params),
        owner.get("source"),
        int(done["success"].sum()) if len(done) else 0,
        done["queries"].mean() if len(done) else math.nan,
        done["seconds"].mean() if len(done) else math.nan,
    )
    return owner


# --------------------------------------------------------------------------- evaluate


def _load_lock(
    prep_h5: str | Path, lock: Mapping[str, str]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    """``(table, clean, locked, params)`` of a lock: the locked file's rows, the clean images of
    the same ids (matched by id in ``prep_h5``), the locked images and the per-image θ, in row
    order."""
    table = read_table(lock["locked"])
    prep = read_table(prep_h5).set_index("image_id")
    missing = sorted(set(table["image_id"]) - set(prep.index))
    if missing:
        raise ValueError(f"{lock['locked']}: ids not in {prep_h5}: {missing[:3]}")
    clean = read_images(prep_h5, prep.loc[table["image_id"], "row"].to_numpy())
    locked = read_images(lock["locked"], table["row"].to_numpy())
    params = pd.read_csv(lock["params"]).set_index("image_id").loc[table["image_id"]]
    return table, clean, locked, params


def evaluate_stage(
    *,
    prep_h5: str | Path,
    locks: Mapping[str, Mapping[str, str]],
    models: Mapping[str, str],
    input_resolutions: Mapping[str, int],
    boxes_csv: str | Path,
    metadata_csv: str | Path,
    device: str,
    threads: int,
    out_csv: str | Path,
    out_md: str | Path,
    out_json: str | Path,
) -> pd.DataFrame:
    """Accuracy/AUROC of every target model on clean, optimised and random-placement images of
    every source (the source × target matrix), lesion overlap against the true boxes, quality
    outside the footprint, queries and seconds per image."""
    set_threads(threads)
    dev = resolve_device(device)
    nets = {name: load_classifier(p) for name, p in models.items()}
    weights = {name: weights_sha256(net) for name, net in nets.items()}
    rows, summary = [], {}
    for source, paths in locks.items():
        table, clean, locked, params = _load_lock(prep_h5, paths)
        rand = read_images(paths["random"], table["row"].to_numpy())
        y = params["y"].to_numpy(dtype=np.int64, copy=True)
        source_sha = weights_sha256(load_classifier(paths["model"]))
        for target, net in nets.items():
            for cond, imgs in (("clean", clean), ("optimised", locked), ("random", rand)):
                probs = predict_proba(
                    net, imgs, device=dev, input_resolution=input_resolutions[target]
                )
                m = classification_metrics(probs, y)
                rows.append(
                    {
                        "source": source,
                        "target": target,
                        "placement": cond,
                        "white_box": weights[target] == source_sha,
                        **m,
                    }
                )
        summary[source] = _lock_summary(
            table, params, clean, locked, boxes_csv, metadata_csv, clean.shape[1]
        )
    df = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    write_json_atomic(out_json, summary)
    write_text_atomic(out_md, matrix_markdown(df, summary))
    return df


def weights_sha256(net: torch.nn.Module) -> str:
    """sha256 of a model's weights (names and tensor bytes): two models with the same hash
    answer alike, so a target with the source's hash is a white-box cell, not a transfer one."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _lock_summary(
    table: pd.DataFrame,
    params: pd.DataFrame,
    clean: np.ndarray,
    locked: np.ndarray,
    boxes_csv: str | Path,
    metadata_csv: str | Path,
    res: int,
) -> dict[str, Any]:
    """Lesion overlap of every footprint with the undilated true boxes (must be 0), quality
    outside the footprint, queries and seconds per image."""
    true_boxes = boxes_in_pixels(pd.read_csv(boxes_csv), pd.read_csv(metadata_csv), res)
    ok = params["status"] == "locked"
    overlaps, q = [], []
    for k, (iid, p) in enumerate(params.iterrows()):
        if p["status"] != "locked":
            continue
        u, v, h, w = int(p["u"]), int(p["v"]), int(p["logo_h"]), int(p["logo_w"])
        forb = forbidden_map(true_boxes.get(iid, np.zeros((0, 4))), (res, res), 0.0)
        overlaps.append(footprint_overlap(forb, u, v, h, w))
        q.append(mx.quality_outside(clean[k], locked[k], mx.footprint_mask((res, res), u, v, h, w)))
    qdf = pd.DataFrame(q)
    done = params[ok]
    return {
        "n_images": int(len(params)),
        "n_locked": int(ok.sum()),
        "n_skipped": int((~ok).sum()),
        "n_flipped_on_source": int(done["success"].astype(bool).sum()),
        "lesion_overlap_pixels_total": int(sum(overlaps)),
        "lesion_overlap_images": int(sum(o > 0 for o in overlaps)),
        "psnr_outside_min": float(qdf["psnr_outside"].min()) if len(qdf) else math.nan,
        "ssim_outside_min": float(qdf["ssim_outside"].min()) if len(qdf) else math.nan,
        "psnr_mean": float(qdf["psnr"].mean()) if len(qdf) else math.nan,
        "ssim_mean": float(qdf["ssim"].mean()) if len(qdf) else math.nan,
        "queries_mean": float(done["queries"].mean()),
        "queries_max": int(done["queries"].max()) if len(done) else 0,
        "seconds_mean": float(done["seconds"].mean()),
        "alpha_mean": float(done["alpha"].mean()),
    }


def matrix_markdown(df: pd.DataFrame, summary: Mapping[str, Any]) -> str:
    """Accuracy and AUROC per source (rows) × target (columns): clean → optimised (random)."""
    targets = list(dict.fromkeys(df["target"]))
    lines = [
        "# MedLocker: clean → locked (random placement)",
        "",
        "(white-box): the target has the source's weights (same recipe, seed and data).",
    ]
    for metric in ("accuracy", "auroc"):
        lines += ["", f"{metric}:", "", "| source \\ target | " + " | ".join(targets) + " |"]
        lines.append("|---" * (len(targets) + 1) + "|")
        for source in dict.fromkeys(df["source"]):
            cells = []
            for t in targets:
                sub = df[(df["source"] == source) & (df["target"] == t)].set_index("placement")
                wb = " (white-box)" if bool(sub["white_box"].iloc[0]) else ""
                cells.append(
                    f"{sub.loc['clean', metric]:.3f} → **{sub.loc['optimised', metric]:.3f}** "
                    f"({sub.loc['random', metric]:.3f}){wb}"
                )
            lines.append(f"| {source} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| source | locked | skipped | flipped on source | lesion overlap (px) | "
        "PSNR outside | SSIM outside (min) | PSNR whole | queries/image | s/image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for source, s in summary.items():
        lines.append(
            f"| {source} | {s['n_locked']}/{s['n_images']} | {s['n_skipped']} | "
            f"{s['n_flipped_on_source']} | {s['lesion_overlap_pixels_total']} | "
            f"{s['psnr_outside_min']:.1f} | {s['ssim_outside_min']:.4f} | {s['psnr_mean']:.1f} | "
            f"{s['queries_mean']:.0f} | {s['seconds_mean']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- attacks


def attacks_stage(
    *,
    prep_h5: str | Path,
    lock: Mapping[str, str],
    logo_path: str | Path,
    models: Mapping[str, str],
    input_resolutions: Mapping[str, int],
    cfg: Mapping[str, Any],
    finetune_train: Mapping[str, Any],
    device: str,
    threads: int,
    out_csv: str | Path,
    out_md: str | Path,
) -> pd.DataFrame:
    """Accuracy and AUROC of each model after each attack on the lock, beside the same model on
    the clean images under the same transform (docs/methods/medlocker.md, "What is measured")."""
    set_threads(threads)
    seed_everything(int(cfg["seed"]))
    dev = resolve_device(device)
    _table, clean, locked, params = _load_lock(prep_h5, lock)
    y = params["y"].to_numpy(dtype=np.int64, copy=True)
    pairs = attack_pairs(clean, locked, params, load_logo(logo_path), cfg["attacks"])
    nets = {name: load_classifier(p) for name, p in models.items()}

    def predict(name: str, imgs: np.ndarray) -> np.ndarray:
        return predict_proba(nets[name], imgs, device=dev, input_resolution=input_resolutions[name])

    rows = attack_rows(list(nets), pairs, y, predict)
    rows += finetune_attack(
        nets, clean, locked, y, input_resolutions, finetune_train, int(cfg["seed"]), dev
    )
    df = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    write_text_atomic(out_md, attacks_markdown(df))
    return df


#: The attack-table row of the lock itself (no transform).
NO_ATTACK = "none (locked)"


def attack_pairs(
    clean: np.ndarray,
    locked: np.ndarray,
    params: pd.DataFrame,
    logo: Logo,
    attacks_cfg: Mapping[str, Any],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per attack, ``(clean images transformed, locked images transformed)``: the *same*
    transform applied to both, so the clean column says what the transform alone costs.

    Inpainting fills the logo's pixels (OpenCV Telea) at the certified footprint (``known``) or
    at the footprint the attacker estimates on the locked image by template matching
    (``estimated``); the clean image gets the same pixels filled. Images the lock skipped are
    left as they are by both inpaintings. Crop to the lungs, resize and back, and the JPEG round
    trip are applied image by image (``attacks_cfg``: ``crop_box``, ``resize``,
    ``jpeg_quality``)."""
    if clean.shape != locked.shape or len(params) != len(clean):
        raise ValueError(
            f"clean {clean.shape}, locked {locked.shape} and {len(params)} parameter rows differ"
        )
    res = clean.shape[1]
    known = (clean.copy(), locked.copy())
    est = (clean.copy(), locked.copy())
    for k, (_iid, p) in enumerate(params.iterrows()):
        if p["status"] != "locked":
            continue
        _, mask = logo.scaled(max(int(p["logo_h"]), int(p["logo_w"])))
        m = mask.numpy()
        at_known = mx.logo_pixels((res, res), m, int(p["u"]), int(p["v"]))
        eu, ev = mx.estimate_footprint(locked[k], m)
        at_est = mx.logo_pixels((res, res), m, eu, ev)
        for out, px in ((known, at_known), (est, at_est)):
            out[0][k] = mx.inpaint(clean[k], px)
            out[1][k] = mx.inpaint(locked[k], px)

    def each(fn: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([fn(x) for x in clean]), np.stack([fn(x) for x in locked])

    ac = attacks_cfg
    return {
        NO_ATTACK: (clean, locked),
        "inpaint, footprint known": known,
        "inpaint, footprint estimated": est,
        "crop to lungs": each(lambda x: mx.crop_resize(x, tuple(ac["crop_box"]))),
        f"resize x{ac['resize']}": each(lambda x: mx.down_up(x, ac["resize"])),
        f"JPEG q{ac['jpeg_quality']}": each(lambda x: mx.jpeg(x, ac["jpeg_quality"])),
    }


def attack_rows(
    models: list[str],
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    y: np.ndarray,
    predict: Callable[[str, np.ndarray], np.ndarray],
) -> list[dict[str, Any]]:
    """One row per (attack, model): accuracy/AUROC on the clean images (``*_clean``), on the
    clean images under the attack's transform (``*_clean_attacked``), on the locked images
    (``*_before``) and on the locked images under the transform (``accuracy``, ``auroc``).
    ``predict(model, images)`` returns class probabilities ``(N, 2)``."""
    rows = []
    for name in models:
        clean, locked = pairs[NO_ATTACK]
        c0 = classification_metrics(predict(name, clean), y)
        l0 = classification_metrics(predict(name, locked), y)
        for attack, (clean_t, locked_t) in pairs.items():
            if attack == NO_ATTACK:
                ct, lt = c0, l0
            else:
                ct = classification_metrics(predict(name, clean_t), y)
                lt = classification_metrics(predict(name, locked_t), y)
            rows.append(
                {
                    "attack": attack,
                    "model": name,
                    "accuracy_clean": c0["accuracy"],
                    "auroc_clean": c0["auroc"],
                    "accuracy_clean_attacked": ct["accuracy"],
                    "auroc_clean_attacked": ct["auroc"],
                    "accuracy_before": l0["accuracy"],
                    "auroc_before": l0["auroc"],
                    "accuracy": lt["accuracy"],
                    "auroc": lt["auroc"],
                    "n": len(y),
                }
            )
    return rows


def _metrics(
    net: torch.nn.Module, imgs: np.ndarray, y: np.ndarray, dev: torch.device, r: int
) -> dict[str, float]:
    return classification_metrics(predict_proba(net, imgs, device=dev, input_resolution=r), y)


def finetune_attack(
    nets: Mapping[str, torch.nn.Module],
    clean: np.ndarray,
    locked: np.ndarray,
    y: np.ndarray,
    input_resolutions: Mapping[str, int],
    train_cfg: Mapping[str, Any],
    seed: int,
    dev: torch.device,
) -> list[dict[str, Any]]:
    """Fine-tune each model on half of the locked images with their labels; accuracy/AUROC on
    the other half's locked and clean images, before and after (the clean column after is the
    tuned model on the clean held-out images)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    tr, te = order[: len(y) // 2], order[len(y) // 2 :]
    data = torch.utils.data.TensorDataset(
        torch.from_numpy(locked[tr]).float().unsqueeze(1) / 255.0, torch.from_numpy(y[tr])
    )
    cfg = TrainConfig.from_dict(dict(train_cfg))
    out = []
    for name, net in nets.items():
        r = input_resolutions[name]
        before = _metrics(net, locked[te], y[te], dev, r)
        clean_before = _metrics(net, clean[te], y[te], dev, r)
        tuned = load_classifier_copy(net)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            train_classifier(
                tuned,
                data,
                cfg,
                seed=seed,
                device=dev,
                last_path=Path(d) / "last.pt",
                input_resolution=r,
            )
        clean_after = _metrics(tuned, clean[te], y[te], dev, r)
        after = _metrics(tuned, locked[te], y[te], dev, r)
        out.append(
            {
                "attack": f"fine-tune on {len(tr)} locked images ({cfg.epochs} ep), held-out half",
                "model": name,
                "accuracy_clean": clean_before["accuracy"],
                "auroc_clean": clean_before["auroc"],
                "accuracy_clean_attacked": clean_after["accuracy"],
                "auroc_clean_attacked": clean_after["auroc"],
                "accuracy_before": before["accuracy"],
                "auroc_before": before["auroc"],
                "accuracy": after["accuracy"],
                "auroc": after["auroc"],
                "n": len(te),
                "seconds": time.perf_counter() - t0,
            }
        )
    return out


def load_classifier_copy(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net)


def attacks_markdown(df: pd.DataFrame) -> str:
    """Accuracy, then AUROC: per attack and model, the clean images and the locked images, each
    without and with the attack's transform (fine-tuning: before and after, held-out half)."""
    lines = [
        "# Attacks on the MedLocker lock",
        "",
        "Each transform is applied to the clean images too: *clean, attacked* is what the "
        "transform alone costs the model; the lock is undone where *locked, attacked* comes back "
        "to *clean, attacked*, not where it rises above *locked*. Fine-tuning: the model before "
        "and after tuning on the other half of the locked images, on the held-out half.",
    ]
    for metric in ("accuracy", "auroc"):
        lines += [
            "",
            f"{metric}:",
            "",
            "| attack | model | clean | clean, attacked | locked | locked, attacked |",
            "|---|---|---|---|---|---|",
        ]
        for r in df.to_dict("records"):
            cells = [
                r.get(f"{metric}_clean"),
                r.get(f"{metric}_clean_attacked"),
                r.get(f"{metric}_before"),
                r.get(metric),
            ]
            lines.append(
                f"| {r['attack']} | {r['model']} | " + " | ".join(map(_cell, cells)) + " |"
            )
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"


# --------------------------------------------------------------------------- examples


def examples_stage(
    *,
    prep_h5: str | Path,
    lock: Mapping[str, str],
    boxes_csv: str | Path,
    metadata_csv: str | Path,
    n: int,
    out_png: str | Path,
) -> None:
    """Original | locked | footprint (red) over the lesion boxes (green) for ``n`` images,
    those with lesion boxes first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    table, clean, locked, params = _load_lock(prep_h5, lock)
    res = clean.shape[1]
    boxes = boxes_in_pixels(pd.read_csv(boxes_csv), pd.read_csv(metadata_csv), res)
    ids = [i for i in table["image_id"] if params.loc[i, "status"] == "locked"]
    ids = sorted(ids, key=lambda i: i not in boxes)[:n]
    fig, axes = plt.subplots(len(ids), 3, figsize=(7.5, 2.5 * max(1, len(ids))), squeeze=False)
    pos = {iid: k for k, iid in enumerate(table["image_id"])}
    for row, iid in zip(axes, ids, strict=False):
        k, p = pos[iid], params.loc[iid]
        row[0].imshow(clean[k], cmap="gray", vmin=0, vmax=255)
        row[1].imshow(locked[k], cmap="gray", vmin=0, vmax=255)
        row[2].imshow(clean[k], cmap="gray", vmin=0, vmax=255)
        for x0, y0, x1, y1 in boxes.get(iid, np.zeros((0, 4))):
            row[2].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime"))
        row[2].add_patch(
            Rectangle((p["u"], p["v"]), p["logo_w"], p["logo_h"], fill=False, color="red")
        )
        row[1].set_title(f"α={p['alpha']:.2f} margin {p['margin']:.2f}", fontsize=8)
        for ax in row:
            ax.axis("off")
    axes[0][0].set_title("original", fontsize=8)
    axes[0][2].set_title("footprint (red) vs lesion boxes (green)", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
