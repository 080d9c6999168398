# Ingest (synthetic / CheXpert / NIH) -> normalised metadata -> patient-disjoint splits -> HDF5.


def ingest_inputs(wildcards):
    if config["data"]["source"] == "synthetic":
        return {"synthetic": "results/data/synthetic/CheXpert-v1.0-small/train.csv"}
    return {}


def ingest_source_cfg():
    """What the ingest script reads: the source and its sub-config (synthetic -> staged tree)."""
    d = config["data"]
    if d["source"] == "synthetic":
        return {
            "source": "chexpert",
            "cfg": {
                "dir": "results/data/synthetic",
                "url": None,
                "sha256": None,
                "csv": ["train.csv", "valid.csv"],
            },
            "boxes_csv": "CheXpert-v1.0-small/BBox_List_synthetic.csv",
        }
    return {"source": d["source"], "cfg": d[d["source"]], "boxes_csv": None}


rule synthesize:
    output:
        csv="results/data/synthetic/CheXpert-v1.0-small/train.csv",
    params:
        preset=config["data"]["synthetic"]["preset"],
        seed=config["data"]["synthetic"]["seed"],
        out_dir="results/data/synthetic",
    log:
        logf("data/synthesize"),
    benchmark:
        cbench("data/synthesize")
    conda:
        conda_env()
    cache: CACHE
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
    params:
        source=ingest_source_cfg(),
        on_bad_image=config["data"]["on_bad_image"],
        work_dir="results/data/download",
    log:
        logf("data/ingest"),
    benchmark:
        bench("data/ingest")
    conda:
        conda_env()
    script:
        "../scripts/ingest.py"


rule splits:
    input:
        metadata="results/data/metadata.csv",
    output:
        splits="results/data/splits.csv",
    params:
        fractions=config["data"]["splits"],
        seed=config["data"]["split_seed"],
        stratify_on=config["task"]["target_observation"],
    log:
        logf("data/splits"),
    benchmark:
        bench("data/splits")
    conda:
        conda_env()
    script:
        "../scripts/splits.py"


rule preprocess:
    input:
        metadata="results/data/metadata.csv",
        splits="results/data/splits.csv",
        manifest="results/data/ingest.json",
    output:
        h5="results/prep/r{res}.h5",
        quarantine="results/prep/r{res}.quarantine.csv",
    params:
        resolution=lambda wc: int(wc.res),
        on_bad_image=config["data"]["on_bad_image"],
        compression_level=config["preprocess"]["compression_level"],
        workers=config["preprocess"]["workers"],
        config_hash=lambda wc: stable_hash(
            {"data": config["data"], "preprocess": config["preprocess"], "res": wc.res}
        ),
    threads: config["preprocess"]["workers"]
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        logf("prep/r{res}"),
    benchmark:
        bench("prep/r{res}")
    conda:
        conda_env()
    script:
        "../scripts/preprocess.py"


rule data_all:
    input:
        "results/data/splits.csv",
        expand("results/prep/r{res}.h5", res=config["preprocess"]["resolutions"]),
