# Suspect models under the four scenarios (docs/methods/verification.md). Malicious and Ind-W train on a
# watermarked release of a variant; Ind-M and Ind-D never see a watermark, so they are shared by
# every variant and keyed by their resolutions only.


rule suspect_watermarked:
    input:
        train=lambda wc: mfile(
            wc.variant,
            wc.method,
            f"{suspect_release_wm(vcfg(wc.variant), wc.scenario, wc.seed)}/release/r{suspect_data_res(vcfg(wc.variant))}.h5",
        ),
        test=lambda wc: f"results/prep/r{suspect_data_res(vcfg(wc.variant))}.h5",
    output:
        model=mpattern("suspects/{scenario}/{arch}/seed{seed}/model.pt"),
        history=mpattern("suspects/{scenario}/{arch}/seed{seed}/history.csv"),
        metrics=mpattern("suspects/{scenario}/{arch}/seed{seed}/metrics.json"),
    log:
        mlog("suspects/{scenario}/{arch}/seed{seed}"),
    benchmark:
        mbench("suspects/{scenario}/{arch}/seed{seed}")
    wildcard_constraints:
        scenario="Malicious|Ind-W",
    conda:
        conda_env()
    threads: config["train_threads"]
    resources:
        **suspect_resources(),
    params:
        arch=lambda wc: wc.arch,
        task=config["task"],
        train_cfg=lambda wc: suspect_train_cfg(vcfg(wc.variant), wc.arch),
        input_resolution=lambda wc: vcfg(wc.variant)["suspects"]["resolution"],
        seed=lambda wc: int(wc.seed),
        device=config["device"],
        last=mpattern("suspects/{scenario}/{arch}/seed{seed}/last.pt"),
        split=None,
        meta=lambda wc: {
            "scenario": wc.scenario,
            "variant": wc.variant,
            "method": wc.method,
        },
    script:
        "../scripts/train_suspect.py"


rule suspect_clean:
    input:
        train="results/prep/r{dres}.h5",
        test="results/prep/r{dres}.h5",
    output:
        model="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}_e{epochs}/seed{seed}/model.pt",
        history="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}_e{epochs}/seed{seed}/history.csv",
        metrics="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}_e{epochs}/seed{seed}/metrics.json",
    log:
        logf(
            "clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}_e{epochs}/seed{seed}"
        ),
    cache: "omit-software"
    conda:
        conda_env()
    threads: config["train_threads"]
    resources:
        **suspect_resources(),
    params:
        arch=lambda wc: wc.arch,
        task=config["task"],
        train_cfg=lambda wc: suspect_train_cfg(config, wc.arch)
        | {"epochs": int(wc.epochs)},
        input_resolution=lambda wc: int(wc.res),
        seed=lambda wc: int(wc.seed),
        device=config["device"],
        last="results/clean_suspects/{clean_scenario}/{arch}/r{res}_from{dres}_e{epochs}/seed{seed}/last.pt",
        split=lambda wc: CLEAN_SPLIT[wc.clean_scenario],
        meta=lambda wc: {"scenario": wc.clean_scenario},
        code=script_code("train_suspect"),
    script:
        "../scripts/train_suspect.py"
