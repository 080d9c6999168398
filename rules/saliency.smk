# Surrogate classifier (owner's release split) and batched EigenCAM saliency maps.


rule surrogate:
    input:
        h5="results/prep/r{sres}.h5",
    output:
        model="results/surrogate/{arch}_r{sres}/model.pt",
        history="results/surrogate/{arch}_r{sres}/history.csv",
        metrics="results/surrogate/{arch}_r{sres}/metrics.json",
    log:
        logf("surrogate/{arch}_r{sres}"),
    cache: "omit-software"
    conda:
        conda_env()
    threads: config["train_threads"]
    resources:
        **rule_resources(
            "surrogate",
            config["train_threads"],
            config["surrogate"]["train"]["num_workers"],
            resolution=lambda wc: int(wc.sres),
        ),
    params:
        arch=lambda wc: wc.arch,
        task=config["task"],
        train_cfg=config["surrogate"]["train"],
        seed=config["surrogate"]["seed"],
        seed_stream="surrogate",
        input_resolution=lambda wc: int(wc.sres),
        device=config["device"],
        last="results/surrogate/{arch}_r{sres}/last.pt",
        code=script_code("train_surrogate"),
    script:
        "../scripts/train_surrogate.py"


rule saliency:
    input:
        h5="results/prep/r{res}.h5",
        model="results/surrogate/{arch}_r{sres}/model.pt",
    output:
        h5="results/saliency/{arch}_r{sres}/r{res}.h5",
    log:
        logf("saliency/{arch}_r{sres}/r{res}"),
    cache: "omit-software"
    conda:
        conda_env()
    threads: 2
    resources:
        **rule_resources("saliency", 2, resolution=lambda wc: int(wc.res)),
    params:
        target_layer=config["saliency"]["target_layer"],
        batch_size=config["saliency"]["batch_size"],
        device=config["device"],
        code=script_code("saliency"),
    script:
        "../scripts/saliency.py"
