# Black-box verification of every suspect (brief verification.md). Ind-Wp is DVBW's second
# reading of "independent watermark": the Malicious model queried with an independent key.

VERIFY_SCENARIOS = SCENARIOS + ["Ind-Wp"]
VERIFY_MODEL_SCENARIO = {s: s for s in SCENARIOS} | {"Ind-Wp": "Malicious"}
VERIFY_WATERMARK = {s: "owner" for s in SCENARIOS} | {"Ind-Wp": "indep"}


def verify_inputs(wc):
    c = vcfg(wc.variant)
    owner = f"results/{wc.variant}/{wc.method}/{VERIFY_WATERMARK[wc.vscenario]}/owner"
    return {
        "model": suspect_model(
            wc.variant, wc.method, VERIFY_MODEL_SCENARIO[wc.vscenario], wc.arch, wc.seed
        ),
        "owner": f"{owner}/owner.json",
        "verification": f"{owner}/verification_r{suspect_data_res(c)}.h5",
    }


rule verify:
    input:
        unpack(verify_inputs),
    output:
        summary="results/{variant}/{method}/verify/{vscenario}/{arch}/seed{seed}/{attack}/summary.json",
        per_image="results/{variant}/{method}/verify/{vscenario}/{arch}/seed{seed}/{attack}/per_image.csv",
    wildcard_constraints:
        vscenario="|".join(VERIFY_SCENARIOS),
    params:
        verify=lambda wc: vcfg(wc.variant)["verify"],
        input_resolution=lambda wc: vcfg(wc.variant)["suspects"]["resolution"],
        attack=lambda wc: wc.attack,
        labels=lambda wc: {
            "variant": wc.variant,
            "method": wc.method,
            "scenario": wc.vscenario,
            "arch": wc.arch,
            "seed": int(wc.seed),
            "attack": wc.attack,
        },
        device=config["device"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        logf("{variant}/{method}/verify/{vscenario}/{arch}/seed{seed}/{attack}"),
    benchmark:
        bench("{variant}/{method}/verify/{vscenario}/{arch}/seed{seed}/{attack}")
    conda:
        conda_env()
    script:
        "../scripts/verify.py"


def verify_targets(variant="main", method="xmark", attacks=("none",)):
    c = vcfg(variant)
    out = []
    for scenario in VERIFY_SCENARIOS:
        seeds = seeds_for(c, VERIFY_MODEL_SCENARIO[scenario])
        for arch in c["suspects"]["archs"]:
            for seed in seeds:
                for attack in attacks:
                    out.append(
                        f"results/{variant}/{method}/verify/{scenario}/{arch}/seed{seed}/{attack}/summary.json"
                    )
    return out


rule verify_all:
    input:
        verify_targets("main"),
