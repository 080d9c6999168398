# Ingest (synthetic / CheXpert / NIH) -> normalised metadata -> patient-disjoint splits -> HDF5.


rule synthesize:
    output:
        tree=directory("results/data/synthetic"),
    log:
        logf("data/synthesize"),
    cache: "omit-software"
    conda:
        conda_env()
    params:
        preset=config["data"]["synthetic"]["preset"],
        seed=config["data"]["synthetic"]["seed"],
        code=script_code("synthesize"),
    script:
        "../scripts/synthesize.py"


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        metadata="results/data/metadata.csv",
        boxes="results/data/boxes.csv",
        manifest="results/data/ingest.json",
        quarantine="results/data/quarantine.csv",
    log:
        logf("data/ingest"),
    benchmark:
        bench("data/ingest")
    conda:
        conda_env()
    threads: config["preprocess"]["workers"]
    resources:
        **rule_resources("ingest"),
    params:
        source=ingest_source_cfg(),
        on_bad_image=config["data"]["on_bad_image"],
        work_dir="results/data/download",
        workers=config["preprocess"]["workers"],
    script:
        "../scripts/ingest.py"


rule splits:
    input:
        metadata="results/data/metadata.csv",
    output:
        splits="results/data/splits.csv",
    log:
        logf("data/splits"),
    benchmark:
        bench("data/splits")
    conda:
        conda_env()
    params:
        fractions=config["data"]["splits"],
        seed=config["data"]["split_seed"],
        stratify_on=config["task"]["target_observation"],
        task=config["task"],
    script:
        "../scripts/splits.py"


rule preprocess:
    input:
        metadata="results/data/metadata.csv",
        splits="results/data/splits.csv",
        manifest="results/data/ingest.json",
    output:
        h5="results/prep/r{res}.h5",
    log:
        logf("prep/r{res}"),
    benchmark:
        bench("prep/r{res}")
    conda:
        conda_env()
    threads: config["preprocess"]["workers"]
    resources:
        **rule_resources("preprocess", resolution=lambda wc: int(wc.res)),
    params:
        resolution=lambda wc: int(wc.res),
        compression_level=config["preprocess"]["compression_level"],
        workers=config["preprocess"]["workers"],
        config_hash=lambda wc: stable_hash(
            {"data": config["data"], "preprocess": config["preprocess"], "res": wc.res}
        ),
    script:
        "../scripts/preprocess.py"


rule data_all:
    input:
        "results/data/splits.csv",
        expand("results/prep/r{res}.h5", res=config["preprocess"]["resolutions"]),
