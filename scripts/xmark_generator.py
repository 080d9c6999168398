"""Snakemake wrapper: train the X-Mark generator of one key (resumable)."""

from medmark.logs import script_logging
from medmark.stages.xmark import generator_stage

p = snakemake.params
with script_logging(snakemake.log[0]):
    generator_stage(
        prep_h5=snakemake.input.h5,
        saliency_h5=snakemake.input.saliency,
        surrogate_path=snakemake.input.surrogate,
        xmark_cfg=p.xmark,
        key=p.key,
        task=p.task,
        surrogate_resolution=p.surrogate_resolution,
        device=p.device,
        threads=snakemake.threads,
        out_model=snakemake.output.model,
        out_loss=snakemake.output.loss,
        last=p.last,
        on_degenerate=p.on_degenerate,
    )
