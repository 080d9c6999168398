"""Tables and figures in the shape of the paper (docs/methods/verification.md, "Metrics").

Rows are scenario × arch; columns BA, AUROC, WSR, ΔP (mean, max), the tau-test p-value (median,
max), the key-specific test (p median, max; ΔP of the decoy marks) and the rate of "detected"
verdicts read from each ``summary.json`` (never re-thresholded here), which is the detection
rate for Malicious and the false-positive rate for the independent scenarios (estimated over the
population of independently trained models).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from medmark.io import atomic_path, write_text_atomic  # noqa: E402

SCENARIO_ORDER = ["Malicious", "Ind-W", "Ind-D", "Ind-M", "Ind-Wp"]
#: Scenarios whose correct verdict is "detected".
POSITIVE_SCENARIOS = {"Malicious"}
SUMMARY_COLUMNS = [
    "verdict",
    "p_value",
    "log10_p",
    "statistic",
    "delta_p",
    "wsr",
    "benign_accuracy",
    "auroc",
    "m",
    "tau",
    "alpha",
]


def _num(v: object) -> float:
    if v is None:
        return math.nan
    if isinstance(v, str):
        return math.inf if v == "inf" else -math.inf if v == "-inf" else float(v)
    return float(v)  # type: ignore[arg-type]


def collect_summaries(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One tidy row per verification ``summary.json`` (labels from its ``params``)."""
    rows = []
    for p in paths:
        s = json.loads(Path(p).read_text())
        row = dict(s.get("params", {}))
        for k in SUMMARY_COLUMNS:
            row[k] = s.get(k) if k in ("verdict",) else _num(s.get(k))
        row["detected"] = s.get("verdict") == "detected"
        key = s.get("key_test") or {}
        row["key_p_value"] = _num(key.get("p_value"))
        row["key_mean_diff"] = _num(key.get("mean_diff"))
        row["delta_p_decoys"] = _num(s.get("delta_p_decoys"))
        row["flags"] = ";".join(s.get("flags", []))
        row["path"] = str(p)
        rows.append(row)
    return pd.DataFrame(rows)


def scenario_table(df: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Aggregate per (attack, scenario, arch): means/extremes over models and the rate of
    "detected" verdicts (``alpha`` is only recorded in the legend)."""
    keys = [k for k in ("variant", "method", "attack", "scenario", "arch") if k in df.columns]
    out = []
    for key, g in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip(keys, key, strict=True))
        rec.update(
            {
                "models": len(g),
                "BA": g["benign_accuracy"].mean(),
                "BA_sd": g["benign_accuracy"].std(ddof=0),
                "AUROC": g["auroc"].mean(),
                "WSR": g["wsr"].mean(),
                "dP": g["delta_p"].mean(),
                "dP_max": g["delta_p"].max(),
                "p_median": g["p_value"].median(),
                "p_max": g["p_value"].max(),
                "dP_decoys": _col(g, "delta_p_decoys").mean(),
                "key_p_median": _col(g, "key_p_value").median(),
                "key_p_max": _col(g, "key_p_value").max(),
                "rate_detected": float(_col(g, "detected").astype(float).mean()),
            }
        )
        out.append(rec)
    table = pd.DataFrame(out)
    order = {s: i for i, s in enumerate(SCENARIO_ORDER)}
    return table.sort_values(
        by=[k for k in ("method", "attack") if k in table] + ["scenario", "arch"],
        key=lambda c: c.map(order) if c.name == "scenario" else c,
        kind="stable",
    ).reset_index(drop=True)


def _col(g: pd.DataFrame, name: str) -> pd.Series:
    return g[name] if name in g.columns else pd.Series([math.nan] * len(g), index=g.index)


def _fmt(v: object, col: str) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if col.startswith("p_") or col.startswith("key_p"):
            return f"{v:.2e}"
        return f"{v:.3f}"
    return str(v)


def markdown_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cols = list(columns or df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c], c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def verification_markdown(table: pd.DataFrame, alpha: float) -> str:
    """The paper-shaped table with a legend of what each column means."""
    body = markdown_table(
        table.rename(columns={"rate_detected": "rate(detected)"}),
        [
            c
            for c in (
                "method",
                "attack",
                "scenario",
                "arch",
                "models",
                "BA",
                "AUROC",
                "WSR",
                "dP",
                "dP_max",
                "p_median",
                "p_max",
                "dP_decoys",
                "key_p_median",
                "key_p_max",
                "rate(detected)",
            )
            if c in table.columns or c == "rate(detected)"
        ],
    )
    legend = (
        f"\nrate(detected): share of models whose summary.json verdict is 'detected' (α = {alpha}: "
        "tau-margin test and key-specific test both significant): detection rate for Malicious "
        "(should be 1), false-positive rate for Ind-W, Ind-D, Ind-M and Ind-Wp (should be 0). "
        "BA = benign accuracy on the clean test split; WSR = share of watermarked non-target "
        "verification images classified as the target; dP = mean P(y_t|x') − P(y_t|x) (mean and "
        "max over models); p = tau-margin test; dP_decoys = the same for the decoy marks; key_p = "
        "key-specific test (owner's mark vs decoy marks).\n"
    )
    return body + legend


INDEPENDENT_SCENARIOS = ("Ind-W", "Ind-D", "Ind-M")


def comparison_table(
    tidy: pd.DataFrame,
    quality: dict[str, pd.DataFrame],
    resolution: int,
    label_modes: dict[str, str],
) -> pd.DataFrame:
    """The paper's comparison of methods (X-Mark paper, Tables 1-2): one row per method.

    From the un-attacked verification summaries (``tidy``, :func:`collect_summaries`): BA, WSR,
    ΔP, median p and detection rate of the Malicious models; false-positive rate (share of
    "detected" verdicts) and mean ΔP of the Ind-W, Ind-D and Ind-M models. From each method's
    ``quality.csv`` at ``resolution``: PSNR and 1 − SSIM, the stand-in for LPIPS (no pretrained
    LPIPS backbone is available offline; docs/methods/baselines.md).
    """
    df = tidy[tidy["attack"] == "none"] if "attack" in tidy.columns else tidy
    rows = []
    for method in dict.fromkeys(df["method"]):
        g = df[df["method"] == method]
        mal = g[g["scenario"] == "Malicious"]
        q = quality[method]
        q = q[q["resolution"] == resolution]
        if len(q) != 1:
            raise ValueError(f"{method}: quality.csv has no single row at resolution {resolution}")
        rec: dict[str, object] = {
            "method": method,
            "labels": label_modes[method],
            "BA": mal["benign_accuracy"].mean(),
            "WSR": mal["wsr"].mean(),
            "PSNR": float(q["psnr_mean"].iloc[0]),
            "1-SSIM": 1.0 - float(q["ssim_mean"].iloc[0]),
            "dP_Malicious": mal["delta_p"].mean(),
            "p_Malicious": mal["p_value"].median(),
            "detected_Malicious": float(mal["detected"].astype(float).mean()),
        }
        for scen in INDEPENDENT_SCENARIOS:
            gi = g[g["scenario"] == scen]
            rec[f"FPR_{scen}"] = float(gi["detected"].astype(float).mean()) if len(gi) else math.nan
            rec[f"dP_{scen}"] = gi["delta_p"].mean() if len(gi) else math.nan
        rows.append(rec)
    return pd.DataFrame(rows)


def comparison_markdown(
    table: pd.DataFrame, alpha: float, attacked: pd.DataFrame | None = None
) -> str:
    """The comparison table with its legend, then (``attacked``, :func:`comparison_attack_table`)
    the comparison under attack with its own."""
    legend = (
        f"\nOne row per method, un-attacked suspects, α = {alpha}. BA, WSR, dP (mean "
        "P(y_t|x') − P(y_t|x)), p (median of the method's verification test) and detected (share "
        "of 'detected' verdicts) over the Malicious models; FPR_* = share of 'detected' verdicts "
        "and dP_* = mean ΔP over the models of each independent scenario. PSNR (dB) and 1-SSIM "
        "(the stand-in for LPIPS) between clean and marked release images at the working "
        "resolution. labels: clean = clean-label, poison = poison-label.\n"
    )
    md = markdown_table(table) + legend
    if attacked is None:
        return md
    attack_legend = (
        f"\nOne row per method, α = {alpha}: over the attacked Malicious models (models), dP = "
        "mean ΔP, detected = share of 'detected' verdicts and BA = benign accuracy, un-attacked "
        "(none) and under each attack (docs/methods/attacks.md; a query-time attack transforms "
        "every query, the test images of BA too).\n"
    )
    return md + "\n## Under attack\n\n" + markdown_table(attacked) + attack_legend


def comparison_attack_table(tidy: pd.DataFrame, attacks: Sequence[str]) -> pd.DataFrame:
    """The comparison's attack rows (X-Mark paper, robustness tables): one row per method.

    Over the Malicious models of each method that were attacked (those with a verdict under any
    of ``attacks`` in ``tidy``): ΔP mean, share of "detected" verdicts and BA, un-attacked
    (``none``) and under each attack, so every column is over the same models. A model missing
    one of these verdicts is an error naming it (a partial row would compare other models).
    """
    mal = tidy[tidy["scenario"] == "Malicious"]
    names = ["none", *attacks]
    rows = []
    for method in dict.fromkeys(mal["method"]):
        g = mal[mal["method"] == method]
        model = pd.Series(list(zip(g["arch"], g["seed"], strict=True)), index=g.index)
        chosen = set(model[g["attack"].isin(attacks)])
        if not chosen:
            continue
        rec: dict[str, object] = {"method": method, "models": len(chosen)}
        for attack in names:
            ga = g[(g["attack"] == attack) & model.isin(chosen)]
            missing = sorted(chosen - set(model[ga.index]))
            if missing:
                raise ValueError(
                    f"{method}: no {attack!r} verdict for the Malicious models {missing}"
                )
            rec[f"dP_{attack}"] = ga["delta_p"].mean()
            rec[f"detected_{attack}"] = float(ga["detected"].astype(float).mean())
            rec[f"BA_{attack}"] = ga["benign_accuracy"].mean()
        rows.append(rec)
    return pd.DataFrame(rows)


CARD_COLUMNS = [
    "scenario", "arch", "models", "BA", "WSR", "dP", "dP_max", "p_median", "p_max", "key_p_max",
    "rate_detected",
]  # fmt: skip
CARD_ATTACK_COLUMNS = [
    "attack", "scenario", "arch", "models", "BA", "BA_drop", "dP", "p_median", "rate_detected",
]  # fmt: skip


def method_card_markdown(
    tidy: pd.DataFrame, method: str, label_mode: str, verification: str, alpha: float
) -> str:
    """One method's page of the HTML report: its verification table (un-attacked suspects,
    :func:`scenario_table`) and, when it was attacked, its attack rows (:func:`attack_table`).
    ``tidy`` must hold this method's verdicts only."""
    others = sorted(set(tidy["method"]) - {method})
    if others:
        raise ValueError(f"the card of {method!r} was given verdicts of {others}")
    plain = tidy[tidy["attack"] == "none"]
    lines = [
        f"# {method}",
        "",
        f"labels: {label_mode}; verification test: {verification}; α = {alpha}.",
        "",
        "## Verification (no attack)",
        "",
        markdown_table(scenario_table(plain, alpha), CARD_COLUMNS),
    ]
    if (tidy["attack"] != "none").any():
        table = attack_table(tidy, alpha)
        table = table[table["attack"] != "none"]
        lines += ["", "## Under attack", "", markdown_table(table, CARD_ATTACK_COLUMNS)]
    return "\n".join(lines) + "\n"


def plot_pvalues(df: pd.DataFrame, alpha: float, out: str | Path) -> None:
    """log10 p per scenario (one dot per model, arch by marker) with the α line."""
    scen = [s for s in SCENARIO_ORDER if s in set(df["scenario"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    markers = {"resnet18": "o", "densenet121": "s", "shufflenet_v2": "D"}
    colors = {"resnet18": "tab:blue", "densenet121": "tab:orange", "shufflenet_v2": "tab:purple"}
    rng = np.random.default_rng(0)
    for i, s in enumerate(scen):
        g = df[df["scenario"] == s]
        for arch, ga in g.groupby("arch"):
            y = np.maximum(ga["log10_p"].to_numpy(dtype=float), -300)
            x = i + rng.uniform(-0.15, 0.15, len(y))
            ax.scatter(
                x,
                y,
                marker=markers.get(arch, "^"),
                color=colors.get(arch, "tab:green"),
                label=arch,
                alpha=0.8,
            )
    ax.axhline(math.log10(alpha), color="red", ls="--", label=f"α = {alpha}")
    ax.set_xticks(range(len(scen)), scen)
    ax.set_ylabel("log10 p-value (paired one-sided t-test)")
    ax.set_title("Ownership verification: p-values per scenario")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def plot_examples(
    clean: np.ndarray, marked: np.ndarray, saliency: np.ndarray, amplify: float, out: str | Path
) -> None:
    """Rows of (clean, watermarked, amplified δ, saliency overlay) for a few poisoned images."""
    n = len(clean)
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), squeeze=False)
    titles = ["clean x", "watermarked x'", f"δ × {amplify:g}", "EigenCAM saliency"]
    for i in range(n):
        x, xw = clean[i].astype(np.float32) / 255, marked[i].astype(np.float32) / 255
        delta = xw - x
        axes[i, 0].imshow(x, cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(xw, cmap="gray", vmin=0, vmax=1)
        axes[i, 2].imshow(np.clip(0.5 + amplify * delta, 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[i, 3].imshow(x, cmap="gray", vmin=0, vmax=1)
        axes[i, 3].imshow(saliency[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for j in range(4):
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(titles[j], fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)


def save_figure(fig: plt.Figure, out: str | Path) -> None:
    """Save a matplotlib figure atomically and close it."""
    with atomic_path(out, suffix=Path(out).suffix) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_table(df: pd.DataFrame, csv_path: str | Path, md_path: str | Path, md: str) -> None:
    """Write a tidy CSV and its Markdown rendering atomically."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    write_text_atomic(md_path, md)


def attack_family_of(name: str) -> str:
    """``finetune_frac0.1`` -> ``finetune``; ``none`` -> ``none``."""
    return name.split("_", 1)[0]


def attack_table(df: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per (attack, scenario, arch): BA kept and whether verification still decides correctly."""
    table = scenario_table(df, alpha)
    base = table[table["attack"] == "none"].set_index(["scenario", "arch"])["BA"]
    table["BA_drop"] = [
        base.get((s, a), math.nan) - ba
        for s, a, ba in zip(table["scenario"], table["arch"], table["BA"], strict=True)
    ]
    table.insert(1, "family", table["attack"].map(attack_family_of))
    return table


def plot_attacks(table: pd.DataFrame, alpha: float, out: str | Path) -> None:
    """One panel per attack family: median log10 p (Malicious) and BA vs attack strength."""
    mal = table[table["scenario"] == "Malicious"]
    families = [f for f in dict.fromkeys(mal["family"]) if f != "none"]
    base = mal[mal["attack"] == "none"]
    n = max(len(families), 1)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, fam in zip(axes.flat, families, strict=False):
        g = mal[mal["family"] == fam]
        for arch, ga in g.groupby("arch", sort=False):
            labels = list(ga["attack"].str.split("_", n=1).str[1])
            x = np.arange(len(labels))
            ax.plot(
                x,
                np.log10(np.maximum(ga["p_median"].to_numpy(float), 1e-300)),
                "o-",
                label=f"{arch} log10 p",
            )
            ax.set_xticks(x, labels, rotation=45, fontsize=7)
            b = base[base["arch"] == arch]
            if len(b):
                ax.axhline(
                    np.log10(max(float(b["p_median"].iloc[0]), 1e-300)), ls=":", color="grey"
                )
        ax.axhline(math.log10(alpha), color="red", ls="--", lw=1)
        ax.set_title(fam, fontsize=9)
        ax.set_ylabel("log10 p (Malicious)", fontsize=8)
        ax2 = ax.twinx()
        for arch, ga in g.groupby("arch", sort=False):
            ax2.plot(
                np.arange(len(ga)), ga["BA"].to_numpy(float), "s--", alpha=0.6, label=f"{arch} BA"
            )
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("benign accuracy", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"Adaptive attacks: verification p-value (red: α={alpha}) and BA kept", fontsize=10
    )
    fig.tight_layout()
    save_figure(fig, out)


def example_rows(
    clean_h5: str | Path, release_h5: str | Path, saliency_h5: str | Path, ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clean, released and saliency arrays of ``ids`` (same order) for :func:`plot_examples`."""
    import h5py

    from medmark.data.h5 import read_images, read_table

    def rows_of(path: str | Path) -> np.ndarray:
        t = read_table(path).set_index("image_id")
        return t.loc[list(ids), "row"].to_numpy()

    clean_rows = rows_of(clean_h5)
    with h5py.File(saliency_h5, "r") as f:
        sal = np.stack([f["maps"][int(r)].astype(np.float32) for r in clean_rows])
    return read_images(clean_h5, clean_rows), read_images(release_h5, rows_of(release_h5)), sal


def plot_sweep(df: pd.DataFrame, x: str, xlabel: str, out: str | Path, alpha: float) -> None:
    """ΔP (left) and log10 p (right) against a swept setting ``x``, one line per scenario × arch
    (mean over the scenario's models, the band = min..max), Malicious and independents together."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {
        "Malicious": "tab:red",
        "Ind-W": "tab:blue",
        "Ind-M": "tab:green",
        "Ind-D": "tab:grey",
    }
    for (scen, arch), g in df.groupby(["scenario", "arch"], sort=False):
        agg = g.groupby(x).agg(
            dp=("delta_p", "mean"),
            dp_lo=("delta_p", "min"),
            dp_hi=("delta_p", "max"),
            lp=("log10_p", "median"),
        )
        agg = agg.sort_index()
        c = colors.get(scen, "tab:purple")
        label = f"{scen} {arch} (n={len(g) // max(len(agg), 1)})"
        ax.plot(agg.index, agg["dp"], "o-", color=c, label=label)
        ax.fill_between(agg.index, agg["dp_lo"], agg["dp_hi"], color=c, alpha=0.15)
        ax2.plot(agg.index, agg["lp"].clip(lower=-300), "o-", color=c, label=label)
    ax.axhline(0.2, color="black", ls=":", lw=1, label="τ")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ΔP (mean, band = min..max)")
    ax2.axhline(math.log10(alpha), color="red", ls="--", lw=1, label=f"α = {alpha}")
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel("log10 p, tau-margin test (median)")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)


def rate_intervals(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per scenario (all architectures together): models, "detected" verdicts, their rate and
    the exact Clopper-Pearson interval (``scipy.stats.binomtest(k, n).proportion_ci``)."""
    from scipy import stats

    rows = []
    for scen, g in df.groupby("scenario", sort=False):
        n, k = len(g), int(g["detected"].sum())
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
        rows.append(
            {
                "scenario": scen,
                "archs": ",".join(sorted(set(g["arch"]))),
                "models": n,
                "detected": k,
                "rate": k / n,
                "ci_low": float(ci.low),
                "ci_high": float(ci.high),
                "dP_mean": g["delta_p"].mean(),
                "dP_max": g["delta_p"].max(),
                "p_min": g["p_value"].min(),
                "key_p_min": _col(g, "key_p_value").min(),
            }
        )
    order = {s: i for i, s in enumerate(SCENARIO_ORDER)}
    out = pd.DataFrame(rows)
    return out.sort_values("scenario", key=lambda c: c.map(order)).reset_index(drop=True)


def diagnostics_markdown(diag: dict) -> str:
    """The generator diagnostics (``diagnostics.json``) as Markdown tables."""
    ortho = pd.DataFrame(diag["key_orthogonality"])
    rows = []
    for name, r in [*(("clean reference " + a, r) for a, r in diag["clean_references"].items()),
                    ("release proxy " + diag["release_proxy"]["arch"], diag["release_proxy"])]:  # fmt: skip
        rows.append(
            {
                "model": name,
                "dP": _num(r.get("delta_p")),
                "dP_decoys": _num(r.get("delta_p_decoys")),
                "WSR": _num(r.get("wsr")),
                "p_value": _num(r.get("p_value")),
                "key_p_value": _num(r.get("key_p_value")),
                "verdict": r.get("verdict"),
            }
        )
    resp = pd.DataFrame(rows)
    return (
        "Key orthogonality (mean |cos| of the released marks over the verification images):\n\n"
        + markdown_table(ortho)
        + "\nResponse to the owner's mark without any suspect: short clean references of each "
        "suspect architecture (an Ind-M preview) and a short proxy trained on the release (a "
        "Malicious preview):\n\n" + markdown_table(resp)
    )


# --------------------------------------------------------------------------- methods side by side


def _demote(md: str, levels: int = 2) -> str:
    """Markdown headings pushed ``levels`` down (an embedded table's title under a section)."""
    return "\n".join(
        "#" * levels + line if line.startswith("#") else line for line in md.strip().splitlines()
    )


def _rel(path: str | Path, out: str | Path) -> str:
    import os

    return Path(os.path.relpath(Path(path), Path(out).parent)).as_posix()


def xmark_glance(verification_csv: str | Path) -> dict[str, str]:
    """X-Mark's headline from the tidy verification CSV: rate of "detected" verdicts per
    scenario (no attack), as read from each ``summary.json``."""
    df = pd.read_csv(verification_csv)
    if "method" in df.columns:
        df = df[df["method"] == "xmark"]
    if "attack" in df.columns:
        df = df[df["attack"].fillna("none") == "none"]
    rates = df.groupby("scenario")["detected"].agg(["mean", "size"])
    order = [s for s in SCENARIO_ORDER if s in rates.index]
    return {s: f"{rates.loc[s, 'mean']:.2f} ({int(rates.loc[s, 'size'])} models)" for s in order}


def medlocker_glance(matrix_csv: str | Path) -> dict[str, str]:
    """MedLocker's headline from the source × target matrix: accuracy clean → locked on the
    white-box target(s) and the mean over the transfer targets, per source."""
    df = pd.read_csv(matrix_csv)
    out = {}
    for source, g in df.groupby("source", sort=False):
        for kind, sub in (("white-box", g[g["white_box"]]), ("transfer", g[~g["white_box"]])):
            if sub.empty:
                continue
            acc = sub.groupby("placement")["accuracy"].mean()
            n_t = sub["target"].nunique()
            out[f"{source}, {kind} ({n_t} model{'s' if n_t > 1 else ''})"] = (
                f"{acc['clean']:.3f} → {acc['optimised']:.3f} (random placement "
                f"{acc['random']:.3f})"
            )
    return out


def methods_markdown(
    *,
    out: str | Path,
    xmark: dict[str, str | Path],
    medlocker: dict[str, str | Path],
) -> str:
    """X-Mark's and MedLocker's report sections side by side in one Markdown page, grouped by
    method: an at-a-glance table (what each method does, what ships, what backs it, the
    headline measured here), then X-Mark's section (verification table, p-values, examples,
    diagnostics, release quality) and MedLocker's (source × target matrix, attacks with their
    clean baselines, examples). ``xmark`` / ``medlocker`` map the names used below to files;
    figures are linked relative to ``out``."""
    xg, mg = xmark_glance(xmark["verification_csv"]), medlocker_glance(medlocker["matrix_csv"])
    lines = [
        "# Methods side by side: X-Mark and MedLocker",
        "",
        "| | X-Mark (dataset watermark) | MedLocker (inference-time lock) |",
        "|---|---|---|",
        "| acts | after the fact: proves a suspect model was trained on the release | at "
        "inference: models queried with the locked images mispredict |",
        "| changes | a fraction of the release, imperceptibly, labels kept | every released "
        "image, a visible logo off the lesions, labels kept |",
        "| evidence | black-box paired test on the suspect (docs/methods/verification.md) | "
        "signed certificate; owner's key restores the originals (docs/methods/medlocker.md) |",
        "| measured | rate(detected) "
        + ", ".join(f"{s} {v}" for s, v in xg.items())
        + " | accuracy "
        + "; ".join(f"{k}: {v}" for k, v in mg.items())
        + " |",
        "",
        "## X-Mark",
        "",
        _demote(Path(xmark["verification_md"]).read_text()),
        "",
        f"![p-values per scenario]({_rel(xmark['pvalues_png'], out)})",
        "",
        f"![X-Mark release examples]({_rel(xmark['examples_png'], out)})",
        "",
        _demote(Path(xmark["diagnostics_md"]).read_text()),
        "",
        "### Release quality",
        "",
        _demote(Path(xmark["quality_md"]).read_text()),
        "",
        "## MedLocker",
        "",
        _demote(Path(medlocker["matrix_md"]).read_text()),
        "",
        _demote(Path(medlocker["attacks_md"]).read_text()),
        "",
        f"![MedLocker examples]({_rel(medlocker['examples_png'], out)})",
        "",
    ]
    return "\n".join(lines)
