"""Report tables: rates over populations, the attack table, Markdown rendering."""

import json

import numpy as np
import pandas as pd
import pytest

from medmark.report import (
    attack_table,
    collect_summaries,
    comparison_attack_table,
    comparison_markdown,
    comparison_table,
    markdown_table,
    rate_intervals,
    scenario_table,
)


def _summary(tmp_path, name, scenario, arch, seed, p, attack="none", ba=0.8, method="xmark"):
    d = {
        "verdict": "detected" if p < 0.01 else "not detected",
        "p_value": p,
        "log10_p": float(np.log10(p)) if p > 0 else "-inf",
        "statistic": 1.0,
        "delta_p": 0.5 if p < 0.01 else 0.0,
        "wsr": 0.9 if p < 0.01 else 0.1,
        "benign_accuracy": ba,
        "auroc": None,
        "m": 100,
        "tau": 0.2,
        "alpha": 0.01,
        "flags": ["x"],
        "params": {
            "variant": "main",
            "method": method,
            "scenario": scenario,
            "arch": arch,
            "seed": seed,
            "attack": attack,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(d))
    return path


def test_rates_are_over_the_population(tmp_path):
    paths = [_summary(tmp_path, "m", "Malicious", "resnet18", 0, 1e-5)]
    paths += [
        _summary(tmp_path, f"i{s}", "Ind-M", "resnet18", s, p)
        for s, p in enumerate([0.5, 0.004, 0.9, 0.2])
    ]
    tidy = collect_summaries(paths)
    assert np.isnan(tidy["auroc"]).all()  # JSON null -> NaN
    table = scenario_table(tidy, alpha=0.01).set_index("scenario")
    assert table.loc["Malicious", "rate_detected"] == 1.0
    assert table.loc["Ind-M", "rate_detected"] == 0.25  # one of four independent models
    assert table.loc["Ind-M", "models"] == 4
    assert list(table.index) == ["Malicious", "Ind-M"]  # paper order


def test_attack_table_reports_ba_drop(tmp_path):
    paths = [
        _summary(tmp_path, "a", "Malicious", "resnet18", 0, 1e-5, "none", ba=0.9),
        _summary(tmp_path, "b", "Malicious", "resnet18", 0, 0.3, "jpeg_q25", ba=0.7),
    ]
    t = attack_table(collect_summaries(paths), alpha=0.01).set_index("attack")
    assert t.loc["jpeg_q25", "family"] == "jpeg"
    assert abs(t.loc["jpeg_q25", "BA_drop"] - 0.2) < 1e-9
    assert t.loc["none", "BA_drop"] == 0.0


def test_markdown_table_formats_p_values():
    md = markdown_table(
        pd.DataFrame({"scenario": ["Malicious"], "p_median": [1.23e-7], "BA": [0.5]})
    )
    assert "| Malicious | 1.23e-07 | 0.500 |" in md


def test_rate_comes_from_the_verdict_not_from_p(tmp_path):
    """A summary whose p < alpha but whose verdict is "not detected" (the key test failed)
    counts as not detected. Breakage guarded: the report re-thresholding p."""
    path = _summary(tmp_path, "w", "Ind-W", "resnet18", 0, 1e-6)
    d = json.loads(path.read_text())
    d["verdict"] = "not detected"
    path.write_text(json.dumps(d))
    table = scenario_table(collect_summaries([path]), alpha=0.01)
    assert table.loc[0, "rate_detected"] == 0.0


def test_population_rates_have_clopper_pearson_intervals(tmp_path):
    """0 of 20: the exact 95 % upper bound is 1 - 0.025^(1/20) (closed form, not scipy)."""
    paths = [_summary(tmp_path, f"d{s}", "Ind-D", "shufflenet_v2", s, 0.5) for s in range(20)]
    paths += [_summary(tmp_path, f"m{s}", "Malicious", "shufflenet_v2", s, 1e-9) for s in range(3)]
    table = rate_intervals(collect_summaries(paths)).set_index("scenario")
    assert table.loc["Ind-D", "detected"] == 0 and table.loc["Ind-D", "models"] == 20
    assert table.loc["Ind-D", "ci_low"] == 0.0
    assert abs(table.loc["Ind-D", "ci_high"] - (1 - 0.025 ** (1 / 20))) < 1e-9
    assert table.loc["Malicious", "rate"] == 1.0
    assert abs(table.loc["Malicious", "ci_low"] - 0.025 ** (1 / 3)) < 1e-9


def test_comparison_has_one_row_per_method_with_its_own_rates(tmp_path):
    """Rows are methods; each method's rates come from its own models only (a table that mixed
    methods, or took attacked models, would show other rates)."""
    paths = []
    for method, p_ind in (("xmark", [0.5, 0.9]), ("badnets", [0.004, 0.5])):
        paths.append(
            _summary(tmp_path, f"{method}_m", "Malicious", "resnet18", 0, 1e-5, method=method)
        )
        paths.append(_summary(tmp_path, f"{method}_a", "Malicious", "resnet18", 0, 0.5, attack="jpeg_q50", method=method))  # fmt: skip
        for s, p in enumerate(p_ind):
            paths.append(_summary(tmp_path, f"{method}_w{s}", "Ind-W", "resnet18", s, p, method=method))  # fmt: skip
    quality = {
        m: pd.DataFrame({"resolution": [64, 128], "psnr_mean": [40.0 + i, 50.0], "ssim_mean": [0.99, 1.0]})
        for i, m in enumerate(("xmark", "badnets"))
    }  # fmt: skip
    tidy = collect_summaries(paths)
    table = comparison_table(tidy, quality, 64, {"xmark": "clean", "badnets": "poison"})
    t = table.set_index("method")
    assert list(t.index) == ["xmark", "badnets"]
    assert t.loc["xmark", "FPR_Ind-W"] == 0.0 and t.loc["badnets", "FPR_Ind-W"] == 0.5
    assert t.loc["badnets", "detected_Malicious"] == 1.0  # the attacked model is left out
    assert t.loc["badnets", "PSNR"] == 41.0 and abs(t.loc["xmark", "1-SSIM"] - 0.01) < 1e-12
    assert np.isnan(t.loc["xmark", "FPR_Ind-M"])  # no Ind-M models given
    assert "| xmark | clean |" in comparison_markdown(table, 0.01)


def test_comparison_under_attack_is_per_method_over_the_attacked_models(tmp_path):
    """Per method, the un-attacked and attacked columns are over the same Malicious models (the
    attacked ones): a second, un-attacked model of xmark does not enter its ``none`` column, and
    one method's verdicts never enter another's row."""
    spec = {  # method -> (p none seed 0, p jpeg seed 0, p prune seed 0, BA prune)
        "xmark": (1e-6, 1e-4, 0.5, 0.7),
        "badnets": (1e-5, 0.3, 0.6, 0.6),
    }
    paths = []
    for method, (p0, pj, pp, ba) in spec.items():
        kw = {"method": method}
        paths.append(_summary(tmp_path, f"{method}_n0", "Malicious", "resnet18", 0, p0, **kw))
        paths.append(_summary(tmp_path, f"{method}_j0", "Malicious", "resnet18", 0, pj, attack="jpeg_q50", **kw))  # fmt: skip
        paths.append(_summary(tmp_path, f"{method}_p0", "Malicious", "resnet18", 0, pp, attack="prune_0.5", ba=ba, **kw))  # fmt: skip
        paths.append(_summary(tmp_path, f"{method}_i0", "Ind-M", "resnet18", 0, 0.9, attack="jpeg_q50", **kw))  # fmt: skip
    paths.append(
        _summary(tmp_path, "x_n1", "Malicious", "resnet18", 1, 0.5, ba=0.1)
    )  # not attacked
    t = comparison_attack_table(collect_summaries(paths), ["jpeg_q50", "prune_0.5"])
    t = t.set_index("method")
    assert list(t.index) == ["xmark", "badnets"] and (t["models"] == 1).all()
    assert t.loc["xmark", "detected_none"] == 1.0 and t.loc["xmark", "BA_none"] == 0.8
    assert t.loc["xmark", "detected_jpeg_q50"] == 1.0 and t.loc["badnets", "detected_jpeg_q50"] == 0
    assert t.loc["xmark", "dP_prune_0.5"] == 0.0 and t.loc["badnets", "BA_prune_0.5"] == 0.6
    plain = comparison_table(
        collect_summaries(paths),
        {
            m: pd.DataFrame({"resolution": [64], "psnr_mean": [40.0], "ssim_mean": [0.99]})
            for m in spec
        },
        64,
        {"xmark": "clean", "badnets": "poison"},
    )
    md = comparison_markdown(plain, 0.01, t.reset_index())
    assert md.index("| xmark | clean |") < md.index("## Under attack") < md.index("| xmark | 1 |")


def test_comparison_under_attack_refuses_a_missing_verdict(tmp_path):
    """An attacked model without its un-attacked verdict is named, not averaged over less."""
    paths = [
        _summary(tmp_path, "j", "Malicious", "resnet18", 0, 1e-4, attack="jpeg_q50"),
        _summary(tmp_path, "n1", "Malicious", "resnet18", 1, 1e-4),
    ]
    with pytest.raises(ValueError, match=r"xmark: no 'none' verdict .*\('resnet18', 0\)"):
        comparison_attack_table(collect_summaries(paths), ["jpeg_q50"])


def test_method_card_holds_its_own_verdicts_and_attack_rows(tmp_path):
    """A method's page of the HTML report: its scenario rows, its attack rows, nobody else's."""
    from medmark.report import method_card_markdown

    paths = [
        _summary(tmp_path, "m", "Malicious", "resnet18", 0, 1e-6, method="badnets"),
        _summary(tmp_path, "i", "Ind-M", "resnet18", 0, 0.4, method="badnets"),
        _summary(
            tmp_path, "a", "Malicious", "resnet18", 0, 0.3, attack="jpeg_q50", method="badnets"
        ),  # fmt: skip
    ]
    tidy = collect_summaries(paths)
    md = method_card_markdown(tidy, "badnets", "poison", "targeted", 0.01)
    assert md.startswith("# badnets") and "labels: poison" in md
    plain, attacked = md.split("## Under attack")
    assert "| Malicious |" in plain and "| Ind-M |" in plain and "jpeg_q50" not in plain
    assert "| jpeg_q50 | Malicious | resnet18 | 1 |" in attacked
    with pytest.raises(ValueError, match="verdicts of \\['badnets'\\]"):
        method_card_markdown(tidy, "xmark", "clean", "targeted", 0.01)


def test_methods_page_puts_xmark_and_medlocker_side_by_side(tmp_path):
    """One page, grouped by method: the at-a-glance table with both headlines, X-Mark's section
    then MedLocker's, each embedding its own tables (headings demoted) and figures linked
    relative to the page."""
    from medmark.report import methods_markdown

    main, ml, out = tmp_path / "main/report", tmp_path / "medlocker/report", tmp_path / "report"
    for d in (main, ml, out):
        d.mkdir(parents=True)
    pd.DataFrame(
        {
            "method": "xmark",
            "attack": "none",
            "scenario": ["Malicious", "Malicious", "Ind-M", "Ind-M"],
            "detected": [True, True, False, True],
        }
    ).to_csv(main / "verification.csv", index=False)
    rows = [
        ("surrogate", t, p, wb, a)
        for t, wb, accs in (("surrogate", True, (0.9, 0.5, 0.88)), ("r18", False, (0.8, 0.7, 0.8)))
        for p, a in zip(("clean", "optimised", "random"), accs, strict=True)
    ]
    pd.DataFrame(rows, columns=["source", "target", "placement", "white_box", "accuracy"]).to_csv(
        ml / "matrix.csv", index=False
    )
    for path, text in (
        (main / "verification.md", "# Verification\n\n| a |\n|---|\n| XV |\n"),
        (main / "diagnostics.md", "# Diagnostics\nXD\n"),
        (tmp_path / "report/xmark_quality.md", "| psnr |\n|---|\n| XQ |\n"),
        (ml / "matrix.md", "# MedLocker: clean → locked\nMM\n"),
        (ml / "attacks.md", "# Attacks on the MedLocker lock\nMA\n"),
    ):
        path.write_text(text)
    md = methods_markdown(
        out=out / "methods.md",
        xmark={
            "verification_md": main / "verification.md",
            "verification_csv": main / "verification.csv",
            "pvalues_png": main / "pvalues.png",
            "examples_png": main / "examples.png",
            "diagnostics_md": main / "diagnostics.md",
            "quality_md": out / "xmark_quality.md",
        },
        medlocker={
            "matrix_md": ml / "matrix.md",
            "matrix_csv": ml / "matrix.csv",
            "attacks_md": ml / "attacks.md",
            "examples_png": ml / "examples.png",
        },
    )
    assert md.index("## X-Mark") < md.index("XV") < md.index("XQ") < md.index("## MedLocker")
    assert md.index("## MedLocker") < md.index("MM") < md.index("MA")
    assert "### Verification" in md and "### Attacks on the MedLocker lock" in md
    assert "](../main/report/examples.png)" in md and "](../medlocker/report/examples.png)" in md
    assert "Malicious 1.00 (2 models), Ind-M 0.50 (2 models)" in md
    assert "white-box (1 model): 0.900 → 0.500 (random placement 0.880)" in md
    assert "transfer (1 model): 0.800 → 0.700" in md
