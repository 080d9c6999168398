# medmark: watermark a medical-imaging dataset before release and verify, black-box, that a
# suspect model was trained on it. Stages live in rules/*.smk; logic lives in src/medmark/.
# Embedded default: `snakemake --cores 2 all` (see README.md).


include: "rules/common.smk"
include: "rules/provenance.smk"
include: "rules/data.smk"
include: "rules/saliency.smk"
include: "rules/xmark.smk"
include: "rules/release.smk"
include: "rules/suspects.smk"
include: "rules/verify.smk"
include: "rules/attacks.smk"
include: "rules/report.smk"
include: "rules/medlocker.smk"


# Light rules run on the login node under --profile slurm (no sbatch round trip).
localrules:
    all,
    data_all,
    xmark_all,
    verify_all,
    report_all,
    attacks,
    ablations,
    ingest,
    splits,
    report_tables,
    report_pvalues,
    report_examples,
    report_attacks,
    report_sweep,
    sweeps,
    population,
    population_report,
    xmark_diagnostics,
    report_diagnostics,
    xmark_quality_table,
    report_provenance,
    medlocker,
    medlocker_default_logo,
    medlocker_examples,
    report_methods,
    report_medlocker,
    report_comparison,
    report_method,
    baselines,


from medmark.cluster import (
    check_cache_collisions,
    check_slurm_env,
)  # after common.smk: src/ on path


onstart:
    # Under --profile slurm: stop with a clear message when sbatch or the account is missing.
    check_slurm_env(workflow.executor_plugin.name, os.environ)
    # Snakemake's cache key ignores wildcard values: refuse two cached jobs sharing one key.
    check_cache_collisions(workflow)


rule all:
    input:
        rules.data_all.input,
        rules.xmark_all.input,
        rules.verify_all.input,
        rules.report_all.input,
        "results/report/provenance.md",
