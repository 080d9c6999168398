"""Snakemake wrapper: attacks on the MedLocker lock (inpainting, crop, resize, JPEG, fine-tuning)."""

from medmark.logs import script_logging
from medmark.stages.medlocker import attacks_stage

p, i, o = snakemake.params, snakemake.input, snakemake.output
with script_logging(snakemake.log[0]):
    attacks_stage(
        prep_h5=i.prep,
        lock=p.lock,
        logo_path=i.logo,
        models=p.models,
        input_resolutions=p.input_resolutions,
        cfg=p.cfg,
        finetune_train=p.finetune_train,
        device=p.device,
        threads=snakemake.threads,
        out_csv=o.csv,
        out_md=o.md,
    )
