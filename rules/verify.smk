# Black-box verification of every suspect (docs/methods/verification.md). Ind-Wp is DVBW's second
# reading of "independent watermark": the Malicious model queried with an independent key.


rule verify:
    input:
        unpack(verify_inputs),
    output:
        summary=mpattern("verify/{vscenario}/{arch}/seed{seed}/{attack}/summary.json"),
        per_image=mpattern(
            "verify/{vscenario}/{arch}/seed{seed}/{attack}/per_image.csv"
        ),
    log:
        mlog("verify/{vscenario}/{arch}/seed{seed}/{attack}"),
    benchmark:
        mbench("verify/{vscenario}/{arch}/seed{seed}/{attack}")
    wildcard_constraints:
        vscenario="|".join(VERIFY_SCENARIOS),
    conda:
        conda_env()
    threads: 1
    resources:
        **rule_resources("verify", resolution=classifier_resolution),
    params:
        verify=lambda wc: vcfg(wc.variant)["verify"],
        input_resolution=lambda wc: vcfg(wc.variant)["suspects"]["resolution"],
        query_attack=lambda wc: (
            wc.attack if attack_kind(wc.attack) == "query" else "none"
        ),
        labels=lambda wc: {
            "variant": wc.variant,
            "method": wc.method,
            "scenario": wc.vscenario,
            "arch": wc.arch,
            "seed": int(wc.seed),
            "attack": wc.attack,
        },
        device=config["device"],
    script:
        "../scripts/verify.py"


rule verify_all:
    input:
        [verify_targets("main", m) for m in config["methods"]],
