"""Snakemake wrapper: repair a suspect with a model attack (fine-tune, fine-prune, distil)."""

from medmark.logs import script_logging
from medmark.stages.attacks import attack_model_stage

p = snakemake.params
with script_logging(snakemake.log[0]):
    attack_model_stage(
        suspect_path=snakemake.input.model,
        data_h5=snakemake.input.data,
        clean_split=p.clean_split,
        task=p.task,
        attack=snakemake.wildcards.attack,
        attack_cfg=p.attack_cfg,
        device=p.device,
        threads=snakemake.threads,
        out_model=snakemake.output.model,
        out_metrics=snakemake.output.metrics,
    )
