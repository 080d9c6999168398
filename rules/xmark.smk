# X-Mark: saliency-conditioned generator -> clean-label watermarked release + owner secret.
# {wm} = owner (the dataset owner's key) or indep (an independent key, for Ind-W and Ind-W').


rule xmark_generator:
    input:
        h5=lambda wc: f"results/prep/r{xres(wc)}.h5",
        saliency=lambda wc: f"results/saliency/{surrogate_tag()}/r{xres(wc)}.h5",
        surrogate=f"results/surrogate/{surrogate_tag()}/model.pt",
    output:
        model="results/{variant}/xmark/{wm}/generator/model.pt",
        loss="results/{variant}/xmark/{wm}/generator/loss.csv",
    log:
        logf("{variant}/xmark/{wm}/generator"),
    cache: "omit-software"
    conda:
        conda_env()
    threads: 2
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1,
        cpus_per_gpu=2,
    params:
        xmark=lambda wc: vcfg(wc.variant)["xmark"],
        key=lambda wc: vcfg(wc.variant)["xmark"][WATERMARKS[wc.wm]],
        task=config["task"],
        surrogate_resolution=config["surrogate"]["resolution"],
        device=config["device"],
        last="results/{variant}/xmark/{wm}/generator/last.pt",
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
    output:
        release=expand(
            "results/{{variant}}/xmark/{{wm}}/release/r{res}.h5", res=RELEASE_RES
        ),
        owner="results/{variant}/xmark/{wm}/owner/owner.json",
        generator="results/{variant}/xmark/{wm}/owner/generator.pt",
        verification=expand(
            "results/{{variant}}/xmark/{{wm}}/owner/verification_r{res}.h5",
            res=RELEASE_RES,
        ),
        quality="results/{variant}/xmark/{wm}/owner/quality.csv",
    log:
        logf("{variant}/xmark/{wm}/release"),
    benchmark:
        bench("{variant}/xmark/{wm}/release")
    conda:
        conda_env()
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
        cpus_per_gpu=2,
    params:
        resolutions=RELEASE_RES,
        working_resolution=xres,
        release_dir="results/{variant}/xmark/{wm}/release",
        owner_dir="results/{variant}/xmark/{wm}/owner",
        release_cfg=lambda wc: vcfg(wc.variant)["release"],
        verify_cfg=lambda wc: vcfg(wc.variant)["verify"],
        key=lambda wc: vcfg(wc.variant)["xmark"][WATERMARKS[wc.wm]],
        task=config["task"],
        device=config["device"],
    script:
        "../scripts/xmark_release.py"


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
        xmark_outputs("main", "indep"),
        "results/report/xmark_quality.md",
