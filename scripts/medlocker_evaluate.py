"""Snakemake wrapper: MedLocker's source x target matrix, lesion overlap and quality."""

from medmark.logs import script_logging
from medmark.stages.medlocker import evaluate_stage

p, i, o = snakemake.params, snakemake.input, snakemake.output
with script_logging(snakemake.log[0]):
    evaluate_stage(
        prep_h5=i.prep,
        locks=p.locks,
        models=p.models,
        input_resolutions=p.input_resolutions,
        boxes_csv=i.boxes,
        metadata_csv=i.metadata,
        device=p.device,
        threads=snakemake.threads,
        out_csv=o.csv,
        out_md=o.md,
        out_json=o.json,
    )
