# MedLocker (docs/methods/medlocker.md): an optimised visible logo that stops unauthorised
# diagnosis, with a signed certificate and authorised removal; registered as an inference-time
# lock (src/medmark/methods/registry.py, LOCKS) and released by the generic lock writer
# (src/medmark/methods/lock.py). `snakemake medlocker` (not in
# `all`): lock the configured split against each source model, evaluate clean vs locked on the
# surrogate and every clean Ind-M suspect (the source x target matrix), attack the lock, draw
# examples. Reuses the ingest/preprocess outputs, the surrogate and the Ind-M suspects.


wildcard_constraints:
    ml_source=r"surrogate|resnet18|densenet121|shufflenet_v2",


rule medlocker_default_logo:
    output:
        png="results/medlocker/logo.png",
    log:
        logf("medlocker/logo"),
    conda:
        conda_env()
    script:
        "../scripts/medlocker_logo.py"


rule medlocker_lock:
    input:
        unpack(medlocker_lock_inputs),
    output:
        **medlocker_lock_outputs(),
    log:
        logf("medlocker/{ml_source}/lock"),
    benchmark:
        bench("medlocker/{ml_source}/lock")
    conda:
        conda_env()
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
        cpus_per_gpu=2,
    params:
        lock=ML_LOCK,
        source_id=lambda wc: wc.ml_source,
        input_resolution=lambda wc: medlocker_model(wc.ml_source)[1],
        cfg=ML,
        task=config["task"],
        image_tree=config["release"]["image_tree"],
        code=script_code("medlocker_lock"),
        device=config["device"],
        release_dir="results/medlocker/{ml_source}/release",
        owner_dir="results/medlocker/{ml_source}/owner",
    script:
        "../scripts/medlocker_lock.py"


rule medlocker_evaluate:
    input:
        prep=f"results/prep/r{ML_RES}.h5",
        boxes="results/data/boxes.csv",
        metadata="results/data/metadata.csv",
        locks=[p for s in ML["sources"] for p in medlocker_lock(s).values()],
        models=[medlocker_model(t)[0] for t in medlocker_targets()],
    output:
        csv=report(
            "results/medlocker/report/matrix.csv",
            caption="../report/medlocker_matrix.rst",
            category="MedLocker",
            labels={"what": "accuracy/AUROC per source, target, placement"},
        ),
        md=report(
            "results/medlocker/report/matrix.md",
            caption="../report/medlocker_matrix.rst",
            category="MedLocker",
            labels={"what": "source x target matrix (Markdown)"},
        ),
        json="results/medlocker/report/summary.json",
    log:
        logf("medlocker/report/evaluate"),
    benchmark:
        bench("medlocker/report/evaluate")
    conda:
        conda_env()
    threads: 2
    params:
        locks={s: medlocker_lock(s) for s in ML["sources"]},
        models={t: medlocker_model(t)[0] for t in medlocker_targets()},
        input_resolutions={t: medlocker_model(t)[1] for t in medlocker_targets()},
        device=config["device"],
    script:
        "../scripts/medlocker_evaluate.py"


rule medlocker_attacks:
    input:
        prep=f"results/prep/r{ML_RES}.h5",
        logo=medlocker_logo(),
        lock=list(medlocker_lock(ML["sources"][0]).values()),
        models=[medlocker_model(t)[0] for t in medlocker_targets()],
    output:
        csv=report(
            "results/medlocker/report/attacks.csv",
            caption="../report/medlocker_attacks.rst",
            category="MedLocker",
            labels={"what": "attacks on the lock"},
        ),
        md=report(
            "results/medlocker/report/attacks.md",
            caption="../report/medlocker_attacks.rst",
            category="MedLocker",
            labels={"what": "attacks on the lock (Markdown)"},
        ),
    log:
        logf("medlocker/report/attacks"),
    benchmark:
        bench("medlocker/report/attacks")
    conda:
        conda_env()
    threads: 2
    params:
        lock=medlocker_lock(ML["sources"][0]),
        models={t: medlocker_model(t)[0] for t in medlocker_targets()},
        input_resolutions={t: medlocker_model(t)[1] for t in medlocker_targets()},
        cfg=ML,
        finetune_train=config["suspects"]["train"]
        | {
            "epochs": ML["attacks"]["finetune_epochs"],
            "lr": ML["attacks"]["finetune_lr"],
        },
        device=config["device"],
    script:
        "../scripts/medlocker_attacks.py"


rule medlocker_examples:
    input:
        prep=f"results/prep/r{ML_RES}.h5",
        boxes="results/data/boxes.csv",
        metadata="results/data/metadata.csv",
        lock=list(medlocker_lock(ML["sources"][0]).values()),
    output:
        png=report(
            "results/medlocker/report/examples.png",
            caption="../report/medlocker_examples.rst",
            category="MedLocker",
            labels={"what": "original | locked | footprint vs lesion boxes"},
        ),
    log:
        logf("medlocker/report/examples"),
    conda:
        conda_env()
    params:
        lock=medlocker_lock(ML["sources"][0]),
        n=ML["examples"],
    script:
        "../scripts/medlocker_examples.py"


rule medlocker:
    input:
        "results/medlocker/report/matrix.md",
        "results/medlocker/report/attacks.md",
        "results/medlocker/report/examples.png",


# X-Mark's and MedLocker's report sections side by side (README "MedLocker"): the
# `report_medlocker` target builds both (`all`'s X-Mark report and the `medlocker` target, which
# is not in `all`), so `snakemake report_medlocker --report results/report_medlocker.html` holds
# both, grouped by method on the "Methods" page.
rule report_methods:
    input:
        xmark_verification_md="results/main/report/verification.md",
        xmark_verification_csv="results/main/report/verification.csv",
        xmark_pvalues_png="results/main/report/pvalues.png",
        xmark_examples_png="results/main/report/examples.png",
        xmark_diagnostics_md="results/main/report/diagnostics.md",
        xmark_quality_md="results/report/xmark_quality.md",
        medlocker_matrix_md="results/medlocker/report/matrix.md",
        medlocker_matrix_csv="results/medlocker/report/matrix.csv",
        medlocker_attacks_md="results/medlocker/report/attacks.md",
        medlocker_examples_png="results/medlocker/report/examples.png",
    output:
        md=report(
            "results/report/methods.md",
            caption="../report/methods.rst",
            category="Methods",
            labels={"what": "X-Mark and MedLocker side by side"},
        ),
    log:
        logf("report/methods"),
    conda:
        conda_env()
    script:
        "../scripts/report_methods.py"


rule report_medlocker:
    input:
        rules.report_all.input,
        rules.medlocker.input,
        "results/report/methods.md",
