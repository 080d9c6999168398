# Tables, plots and the Snakemake HTML report (`snakemake --report results/report.html`).


rule report_tables:
    input:
        summaries=lambda wc: [
            f
            for m in vcfg(wc.variant)["methods"]
            for f in verify_targets(wc.variant, m)
        ],
    output:
        csv=report(
            "results/{variant}/report/verification.csv",
            caption="../report/verification_csv.rst",
            category="Verification",
            labels={"variant": "{variant}", "what": "tidy per-suspect results"},
        ),
        md=report(
            "results/{variant}/report/verification.md",
            caption="../report/verification_table.rst",
            category="Verification",
            labels={"variant": "{variant}", "what": "table scenario x arch"},
        ),
    log:
        logf("{variant}/report/tables"),
    conda:
        conda_env()
    params:
        alpha=lambda wc: vcfg(wc.variant)["verify"]["alpha"],
    script:
        "../scripts/report_tables.py"


rule report_pvalues:
    input:
        csv="results/{variant}/report/verification.csv",
    output:
        png=report(
            "results/{variant}/report/pvalues.png",
            caption="../report/pvalues.rst",
            category="Verification",
            labels={"variant": "{variant}", "what": "p-values per scenario"},
        ),
    log:
        logf("{variant}/report/pvalues"),
    conda:
        conda_env()
    params:
        alpha=lambda wc: vcfg(wc.variant)["verify"]["alpha"],
    script:
        "../scripts/report_pvalues.py"


rule report_examples:
    input:
        clean=lambda wc: f"results/prep/r{vcfg(wc.variant)['xmark']['resolution']}.h5",
        release=lambda wc: f"results/{wc.variant}/xmark/owner/release/r{vcfg(wc.variant)['xmark']['resolution']}.h5",
        saliency=lambda wc: f"results/saliency/{surrogate_tag()}/r{vcfg(wc.variant)['xmark']['resolution']}.h5",
        owner="results/{variant}/xmark/owner/owner/owner.json",
    output:
        png=report(
            "results/{variant}/report/examples.png",
            caption="../report/examples.rst",
            category="Release",
            labels={"variant": "{variant}", "what": "watermarked examples"},
        ),
    log:
        logf("{variant}/report/examples"),
    conda:
        conda_env()
    params:
        n=4,
        amplify=10,
    script:
        "../scripts/report_examples.py"


rule report_sweep:
    input:
        summaries=lambda wc: sweep_inputs(wc.sweep),
    output:
        csv="results/report/sweep_{sweep}.csv",
        png=report(
            "results/report/sweep_{sweep}.png",
            caption="../report/sweep.rst",
            category="Sweeps",
            labels={"sweep": "{sweep}"},
        ),
    log:
        logf("report/sweep_{sweep}"),
    wildcard_constraints:
        sweep="|".join(SWEEPS),
    conda:
        conda_env()
    params:
        column=lambda wc: SWEEPS[wc.sweep]["column"],
        xlabel=lambda wc: SWEEPS[wc.sweep]["xlabel"],
        values=lambda wc: sweep_values(wc.sweep),
        alpha=config["verify"]["alpha"],
    script:
        "../scripts/report_sweep.py"


rule sweeps:
    input:
        expand("results/report/sweep_{sweep}.png", sweep=list(SWEEPS)),


rule report_diagnostics:
    input:
        json="results/{variant}/xmark/owner/diagnostics/diagnostics.json",
    output:
        md=report(
            "results/{variant}/report/diagnostics.md",
            caption="../report/diagnostics.rst",
            category="Release",
            labels={"variant": "{variant}", "what": "key diagnostics (no suspects)"},
        ),
    log:
        logf("{variant}/report/diagnostics"),
    conda:
        conda_env()
    script:
        "../scripts/report_diagnostics.py"


rule report_all:
    input:
        "results/main/report/diagnostics.md",
        "results/main/report/verification.md",
        "results/main/report/pvalues.png",
        "results/main/report/examples.png",


for _name in ALL_ABLATIONS:

    rule:
        name:
            f"ablation_{_name}"
        input:
            ablation_targets(_name),


rule ablations:
    input:
        [ablation_targets(n) for n in ALL_ABLATIONS],


rule population_report:
    input:
        summaries=verify_targets("population"),
    output:
        csv="results/population/report/false_positive_rates.csv",
        md=report(
            "results/population/report/false_positive_rates.md",
            caption="../report/population.rst",
            category="Verification",
            labels={"what": "false-positive rates with Clopper-Pearson intervals"},
        ),
    log:
        logf("population/report"),
    conda:
        conda_env()
    params:
        confidence=0.95,
    script:
        "../scripts/report_population.py"


rule population:
    input:
        "results/population/report/false_positive_rates.md",
        "results/population/report/verification.md",


# Provenance of the report's tables and an audit of the tree (README: "Auditing results/"). It
# needs every other target of `all` so that it audits a finished tree.
PROVENANCE_TABLES = [
    "results/main/report/verification.md",
    "results/main/report/pvalues.png",
    "results/main/report/examples.png",
    "results/main/report/diagnostics.md",
    "results/report/xmark_quality.md",
]


rule report_provenance:
    input:
        rules.data_all.input,
        rules.xmark_all.input,
        rules.verify_all.input,
        PROVENANCE_TABLES,
    output:
        md=report(
            "results/report/provenance.md",
            caption="../report/provenance.rst",
            category="Provenance",
            labels={"what": "provenance of each table and audit of results/"},
        ),
        audit="results/report/audit.json",
    log:
        logf("report/provenance"),
    conda:
        conda_env()
    params:
        tables=PROVENANCE_TABLES,
    script:
        "../scripts/report_provenance.py"


# The paper's comparison (rows = methods): X-Mark beside the baselines on the same suspects.
COMPARISON_METHODS = ["xmark", *BASELINES]


rule report_comparison:
    input:
        summaries=lambda wc: [
            f for m in COMPARISON_METHODS for f in verify_targets(wc.variant, m)
        ],
        quality=lambda wc: [
            mfile(wc.variant, m, "owner/owner/quality.csv") for m in COMPARISON_METHODS
        ],
        attacked=lambda wc: [
            f
            for m in COMPARISON_METHODS
            for f in comparison_attack_targets(wc.variant, m)
        ],
    output:
        csv="results/{variant}/report/comparison.csv",
        attacks_csv="results/{variant}/report/comparison_attacks.csv",
        md=report(
            "results/{variant}/report/comparison.md",
            caption="../report/comparison.rst",
            category="Verification",
            labels={
                "variant": "{variant}",
                "what": "methods compared (paper's table)",
            },
        ),
    log:
        logf("{variant}/report/comparison"),
    conda:
        conda_env()
    params:
        methods=COMPARISON_METHODS,
        resolution=lambda wc: vcfg(wc.variant)["xmark"]["resolution"],
        label_modes={
            m: METHOD_REGISTRY.METHODS[m].label_mode for m in COMPARISON_METHODS
        },
        alpha=lambda wc: vcfg(wc.variant)["verify"]["alpha"],
        attacks=lambda wc: vcfg(wc.variant)["attacks"]["comparison"],
    script:
        "../scripts/report_comparison.py"


# One page per method in the HTML report (category "method: {method}").
rule report_method:
    input:
        summaries=lambda wc: verify_targets(wc.variant, wc.method)
        + comparison_attack_targets(wc.variant, wc.method),
    output:
        md=report(
            mpattern("report/card.md"),
            caption="../report/method_card.rst",
            category="method: {method}",
            subcategory="{variant}",
            labels={"variant": "{variant}", "what": "verification and attacks"},
        ),
    log:
        mlog("report/card"),
    conda:
        conda_env()
    params:
        label_mode=lambda wc: METHOD_REGISTRY.METHODS[wc.method].label_mode,
        verification=lambda wc: METHOD_REGISTRY.METHODS[wc.method].verification,
        alpha=lambda wc: vcfg(wc.variant)["verify"]["alpha"],
    script:
        "../scripts/report_method.py"


# Every baseline through release -> suspects -> verification -> the comparison's attacks, beside
# X-Mark (not in `all`: the embedded default's time budget holds X-Mark only; README "Methods").
rule baselines:
    input:
        "results/main/report/comparison.md",
        [mfile("main", m, "report/card.md") for m in COMPARISON_METHODS],
