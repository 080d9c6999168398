# X-Mark: saliency-conditioned generator -> clean-label watermarked release + owner secret.
# {wm} = owner (the dataset owner's key) or indep (an independent key, for Ind-W and Ind-W').


rule xmark_generator:
    input:
        h5=lambda wc: f"results/prep/r{xres(wc)}.h5",
        saliency=lambda wc: f"results/saliency/{surrogate_tag()}/r{xres(wc)}.h5",
        surrogate=f"results/surrogate/{surrogate_tag()}/model.pt",
    output:
        model="results/{variant}/xmark/key{key}/generator/model.pt",
        loss="results/{variant}/xmark/key{key}/generator/loss.csv",
    log:
        logf("{variant}/xmark/key{key}/generator"),
    cache: "omit-software"
    conda:
        conda_env()
    threads: config["train_threads"]
    resources:
        **rule_resources(
            "xmark_generator",
            config["train_threads"],
            config["xmark"]["num_workers"],
            resolution=xres,
        ),
    params:
        xmark=lambda wc: vcfg(wc.variant)["xmark"],
        key=lambda wc: int(wc.key),
        task=config["task"],
        surrogate_resolution=config["surrogate"]["resolution"],
        device=config["device"],
        last="results/{variant}/xmark/key{key}/generator/last.pt",
        code=script_code("xmark_generator"),
        on_degenerate=config["surrogate"]["on_degenerate"],
    script:
        "../scripts/xmark_generator.py"


rule xmark_release:
    input:
        prep=expand("results/prep/r{res}.h5", res=RELEASE_RES),
        saliency=expand(
            f"results/saliency/{surrogate_tag()}/r{{res}}.h5", res=RELEASE_RES
        ),
        generator=generator_path,
        metadata="results/data/metadata.csv",
        surrogate=f"results/surrogate/{surrogate_tag()}/model.pt",
    output:
        **release_outputs(method="xmark"),
        generator=mpattern("{wm}/owner/generator.pt", method="xmark"),
    log:
        logf("{variant}/xmark/{wm}/release"),
    benchmark:
        bench("{variant}/xmark/{wm}/release")
    conda:
        conda_env()
    threads: 2
    resources:
        **rule_resources("release", 2, resolution=max(RELEASE_RES)),
    params:
        **release_params(method="xmark"),
        method="xmark",
        method_cfg=lambda wc: {
            "decoys": vcfg(wc.variant)["xmark"]["decoys"],
            "poison_choice": vcfg(wc.variant)["release"]["poison_choice"],
            "surrogate_resolution": config["surrogate"]["resolution"],
        },
    script:
        "../scripts/release.py"


rule xmark_quality_table:
    input:
        main="results/main/xmark/owner/owner/quality.csv",
        no_laplacian="results/no_laplacian/xmark/owner/owner/quality.csv",
    output:
        csv="results/report/xmark_quality.csv",
        md=report(
            "results/report/xmark_quality.md",
            caption="../report/quality.rst",
            category="Release",
            labels={"what": "release quality, main vs no_laplacian"},
        ),
    log:
        logf("report/xmark_quality"),
    conda:
        conda_env()
    script:
        "../scripts/xmark_quality_table.py"


rule xmark_all:
    input:
        xmark_outputs("main", "owner"),
        [xmark_outputs("main", wm) for wm in indep_wms(config)],
        "results/report/xmark_quality.md",


# Quick diagnostics (no suspect training): a short proxy on the release, short clean references.
rule xmark_proxy:
    input:
        train=lambda wc: f"results/{wc.variant}/xmark/owner/release/r{suspect_data_res(vcfg(wc.variant))}.h5",
        test=lambda wc: f"results/prep/r{suspect_data_res(vcfg(wc.variant))}.h5",
    output:
        model="results/{variant}/xmark/owner/diagnostics/proxy/model.pt",
        history="results/{variant}/xmark/owner/diagnostics/proxy/history.csv",
        metrics="results/{variant}/xmark/owner/diagnostics/proxy/metrics.json",
    log:
        logf("{variant}/xmark/owner/proxy"),
    conda:
        conda_env()
    threads: config["train_threads"]
    resources:
        **suspect_resources(),
    params:
        arch=lambda wc: vcfg(wc.variant)["diagnostics"]["proxy_arch"],
        task=config["task"],
        train_cfg=lambda wc: diagnostics_train_cfg(
            vcfg(wc.variant), vcfg(wc.variant)["diagnostics"]["proxy_arch"]
        ),
        input_resolution=lambda wc: vcfg(wc.variant)["suspects"]["resolution"],
        seed=config["seed"],
        device=config["device"],
        last="results/{variant}/xmark/owner/diagnostics/proxy/last.pt",
        split=None,
        meta=lambda wc: {"role": "release_proxy", "variant": wc.variant},
    script:
        "../scripts/train_suspect.py"


rule reference_clean:
    input:
        train="results/prep/r{dres}.h5",
        test="results/prep/r{dres}.h5",
    output:
        model="results/reference/{arch}/r{res}_from{dres}/model.pt",
        history="results/reference/{arch}/r{res}_from{dres}/history.csv",
        metrics="results/reference/{arch}/r{res}_from{dres}/metrics.json",
    log:
        logf("reference/{arch}/r{res}_from{dres}"),
    cache: "omit-software"
    conda:
        conda_env()
    threads: config["train_threads"]
    resources:
        **suspect_resources(),
    params:
        arch=lambda wc: wc.arch,
        task=config["task"],
        train_cfg=lambda wc: diagnostics_train_cfg(config, wc.arch),
        input_resolution=lambda wc: int(wc.res),
        seed=config["seed"],
        device=config["device"],
        last="results/reference/{arch}/r{res}_from{dres}/last.pt",
        split="release",
        meta={"role": "clean_reference"},
        code=script_code("train_suspect"),
    script:
        "../scripts/train_suspect.py"


rule xmark_diagnostics:
    input:
        owner="results/{variant}/xmark/owner/owner/owner.json",
        indep=lambda wc: [
            f"results/{wc.variant}/xmark/{wm}/owner/owner.json"
            for wm in indep_wms(vcfg(wc.variant))
        ],
        proxy="results/{variant}/xmark/owner/diagnostics/proxy/model.pt",
        references=lambda wc: [
            reference_model(vcfg(wc.variant), arch)
            for arch in vcfg(wc.variant)["suspects"]["archs"]
        ],
    output:
        json="results/{variant}/xmark/owner/diagnostics/diagnostics.json",
    log:
        logf("{variant}/xmark/owner/diagnostics"),
    conda:
        conda_env()
    threads: 1
    resources:
        **rule_resources("xmark_diagnostics", resolution=classifier_resolution),
    params:
        indep_wms=lambda wc: indep_wms(vcfg(wc.variant)),
        archs=lambda wc: vcfg(wc.variant)["suspects"]["archs"],
        resolution=lambda wc: suspect_data_res(vcfg(wc.variant)),
        input_resolution=lambda wc: vcfg(wc.variant)["suspects"]["resolution"],
        verify_cfg=lambda wc: vcfg(wc.variant)["verify"],
        device=config["device"],
    script:
        "../scripts/xmark_diagnostics.py"
