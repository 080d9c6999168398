# Adaptive attacks (docs/methods/attacks.md): model repair produces a new suspect model; query-time input
# transforms wrap the suspect's black box inside the verify rule. Every attacked suspect goes
# through the same verification; `snakemake attacks` builds the attack table and plot.


rule attack_model:
    input:
        model=lambda wc: suspect_model(
            wc.variant, wc.method, wc.scenario, wc.arch, wc.seed
        ),
        data=lambda wc: f"results/prep/r{suspect_data_res(vcfg(wc.variant))}.h5",
    output:
        model=mpattern("attacked/{scenario}/{arch}/seed{seed}/{attack}/model.pt"),
        metrics=mpattern("attacked/{scenario}/{arch}/seed{seed}/{attack}/metrics.json"),
    log:
        mlog("attacked/{scenario}/{arch}/seed{seed}/{attack}"),
    benchmark:
        mbench("attacked/{scenario}/{arch}/seed{seed}/{attack}")
    wildcard_constraints:
        attack=MODEL_ATTACK_REGEX,
    conda:
        conda_env()
    threads: config["train_threads"]
    resources:
        **rule_resources(
            "attack_model",
            config["train_threads"],
            config["suspects"]["train"]["num_workers"],
            resolution=classifier_resolution,
        ),
    params:
        clean_split=lambda wc: vcfg(wc.variant)["attacks"]["clean_split"],
        task=config["task"],
        attack_cfg=lambda wc: attack_cfg(vcfg(wc.variant)),
        device=config["device"],
    script:
        "../scripts/attack_model.py"


rule report_attacks:
    input:
        summaries=lambda wc: attack_targets(wc.variant),
    output:
        csv=report(
            "results/{variant}/report/attacks.csv",
            caption="../report/attacks_csv.rst",
            category="Attacks",
            labels={"variant": "{variant}", "what": "attack table"},
        ),
        md=report(
            "results/{variant}/report/attacks.md",
            caption="../report/attacks_table.rst",
            category="Attacks",
            labels={"variant": "{variant}", "what": "attack table (Markdown)"},
        ),
        png=report(
            "results/{variant}/report/attacks.png",
            caption="../report/attacks_plot.rst",
            category="Attacks",
            labels={"variant": "{variant}", "what": "p-value and BA vs strength"},
        ),
    log:
        logf("{variant}/report/attacks"),
    conda:
        conda_env()
    params:
        alpha=lambda wc: vcfg(wc.variant)["verify"]["alpha"],
    script:
        "../scripts/report_attacks.py"


rule attacks:
    input:
        "results/main/report/attacks.md",
