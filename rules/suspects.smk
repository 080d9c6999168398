# Suspect models under the four scenarios (brief verification.md). Malicious and Ind-W train on a
# watermarked release of a variant; Ind-M and Ind-D never see a watermark, so they are shared by
# every variant and keyed by their resolutions only.

SUSPECT_RELEASE = {"Malicious": "owner", "Ind-W": "indep"}
CLEAN_SPLIT = {"Ind-M": "release", "Ind-D": "independent"}


def suspect_resources():
    return {
        "mem_mb": 8000,
        "runtime": lambda wc, attempt: 120 * attempt,
        "gpu": 1,
        "cpus_per_gpu": 2,
    }


rule suspect_watermarked:
    input:
        train=lambda wc: f"results/{wc.variant}/{wc.method}/{SUSPECT_RELEASE[wc.scenario]}/release/r{suspect_data_res(vcfg(wc.variant))}.h5",
        test=lambda wc: f"results/prep/r{suspect_data_res(vcfg(wc.variant))}.h5",
    output:
        model="results/{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}/model.pt",
        history="results/{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}/history.csv",
        metrics="results/{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}/metrics.json",
    wildcard_constraints:
        scenario="Malicious|Ind-W",
    params:
        task=config["task"],
        train_cfg=lambda wc: vcfg(wc.variant)["suspects"]["train"],
        input_resolution=lambda wc: vcfg(wc.variant)["suspects"]["resolution"],
        seed=lambda wc: int(wc.seed),
        device=config["device"],
        last="results/{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}/last.pt",
        split=None,
        meta=lambda wc: {"scenario": wc.scenario, "variant": wc.variant, "method": wc.method},
    threads: 2
    resources:
        **suspect_resources(),
    log:
        logf("{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}"),
    benchmark:
        bench("{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}")
    conda:
        conda_env()
    script:
        "../scripts/train_suspect.py"


rule suspect_clean:
    input:
        train="results/prep/r{dres}.h5",
        test="results/prep/r{dres}.h5",
    output:
        model="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}/seed{seed}/model.pt",
        history="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}/seed{seed}/history.csv",
        metrics="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}/seed{seed}/metrics.json",
    params:
        task=config["task"],
        train_cfg=config["suspects"]["train"],
        input_resolution=lambda wc: int(wc.res),
        seed=lambda wc: int(wc.seed),
        device=config["device"],
        last="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}/seed{seed}/last.pt",
        split=lambda wc: CLEAN_SPLIT[wc.clean_scenario],
        meta=lambda wc: {"scenario": wc.clean_scenario},
    threads: 2
    resources:
        **suspect_resources(),
    log:
        logf("clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}/seed{seed}"),
    benchmark:
        cbench("clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}/seed{seed}")
    conda:
        conda_env()
    cache: CACHE
    script:
        "../scripts/train_suspect.py"


def suspect_model(variant, method, scenario, arch, seed):
    """Path of a suspect model for any scenario (the clean ones are shared across variants)."""
    c = vcfg(variant)
    if scenario in CLEAN_SPLIT:
        res, dres = c["suspects"]["resolution"], suspect_data_res(c)
        return f"results/clean_suspects/{scenario}/{arch}/r{res}_from{dres}/seed{seed}/model.pt"
    return f"results/{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}/model.pt"
