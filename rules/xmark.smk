# X-Mark: saliency-conditioned generator -> clean-label watermarked release + owner secret.
# {wm} = owner (the dataset owner's key) or indep (an independent key, for Ind-W and Ind-W').


def xres(wc):
    return vcfg(wc.variant)["xmark"]["resolution"]


rule xmark_generator:
    input:
        h5=lambda wc: f"results/prep/r{xres(wc)}.h5",
        saliency=lambda wc: f"results/saliency/{surrogate_tag()}/r{xres(wc)}.h5",
        surrogate=f"results/surrogate/{surrogate_tag()}/model.pt",
    output:
        model="results/{variant}/xmark/{wm}/generator/model.pt",
        loss="results/{variant}/xmark/{wm}/generator/loss.csv",
    params:
        xmark=lambda wc: vcfg(wc.variant)["xmark"],
        key=lambda wc: vcfg(wc.variant)["xmark"][WATERMARKS[wc.wm]],
        task=config["task"],
        device=config["device"],
        last="results/{variant}/xmark/{wm}/generator/last.pt",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1,
        cpus_per_gpu=2,
    log:
        logf("{variant}/xmark/{wm}/generator"),
    benchmark:
        cbench("{variant}/xmark/{wm}/generator")
    conda:
        conda_env()
    cache: CACHE
    script:
        "../scripts/xmark_generator.py"


rule xmark_owner:
    input:
        h5=lambda wc: f"results/prep/r{xres(wc)}.h5",
        generator="results/{variant}/xmark/{wm}/generator/model.pt",
    output:
        owner="results/{variant}/xmark/{wm}/owner/owner.json",
        generator="results/{variant}/xmark/{wm}/owner/generator.pt",
    params:
        release=lambda wc: vcfg(wc.variant)["release"],
        verify=lambda wc: vcfg(wc.variant)["verify"],
        task=config["task"],
        key=lambda wc: vcfg(wc.variant)["xmark"][WATERMARKS[wc.wm]],
        variant=lambda wc: wc.variant,
    log:
        logf("{variant}/xmark/{wm}/owner"),
    benchmark:
        bench("{variant}/xmark/{wm}/owner")
    conda:
        conda_env()
    script:
        "../scripts/xmark_owner.py"


rule xmark_release:
    input:
        h5="results/prep/r{res}.h5",
        saliency=f"results/saliency/{surrogate_tag()}/r{{res}}.h5",
        owner="results/{variant}/xmark/{wm}/owner/owner.json",
        generator="results/{variant}/xmark/{wm}/owner/generator.pt",
    output:
        h5="results/{variant}/xmark/{wm}/release/r{res}.h5",
        verification="results/{variant}/xmark/{wm}/owner/verification_r{res}.h5",
        quality="results/{variant}/xmark/{wm}/owner/quality_r{res}.csv",
    params:
        device=config["device"],
        task=config["task"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
        cpus_per_gpu=2,
    log:
        logf("{variant}/xmark/{wm}/release_r{res}"),
    benchmark:
        bench("{variant}/xmark/{wm}/release_r{res}")
    conda:
        conda_env()
    script:
        "../scripts/xmark_release.py"


rule xmark_release_tree:
    input:
        h5=lambda wc: f"results/{wc.variant}/xmark/{wc.wm}/release/r{xres(wc)}.h5",
        metadata="results/data/metadata.csv",
    output:
        tree=directory("results/{variant}/xmark/{wm}/release/CheXpert-v1.0-small-xmark"),
    log:
        logf("{variant}/xmark/{wm}/release_tree"),
    benchmark:
        bench("{variant}/xmark/{wm}/release_tree")
    conda:
        conda_env()
    script:
        "../scripts/xmark_release_tree.py"


def xmark_outputs(variant, wm="owner"):
    c = vcfg(variant)
    base = f"results/{variant}/xmark/{wm}"
    out = [f"{base}/generator/loss.csv", f"{base}/owner/owner.json"]
    out += [f"{base}/release/r{r}.h5" for r in release_resolutions(c)]
    if c["release"]["image_tree"]:
        out.append(f"{base}/release/CheXpert-v1.0-small-xmark")
    return out


rule xmark_quality_table:
    input:
        main=lambda wc: f"results/main/xmark/owner/owner/quality_r{config['xmark']['resolution']}.csv",
        no_lap=lambda wc: f"results/no_laplacian/xmark/owner/owner/quality_r{vcfg('no_laplacian')['xmark']['resolution']}.csv",
    output:
        csv="results/report/xmark_quality.csv",
        md="results/report/xmark_quality.md",
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
