"""Snakemake wrapper: a registered method's release, the owner's secret and release quality."""

from medmark.logs import script_logging
from medmark.stages.release import release_stage

p = snakemake.params
inputs = dict(snakemake.input.items())
with script_logging(snakemake.log[0]):
    release_stage(
        method=p.method,
        method_cfg=p.method_cfg,
        key=p.key,
        inputs=inputs,
        prep=dict(zip(p.resolutions, snakemake.input.prep, strict=True)),
        saliency=(
            dict(zip(p.resolutions, snakemake.input.saliency, strict=True))
            if "saliency" in inputs
            else None
        ),
        metadata_csv=snakemake.input.metadata,
        release_dir=p.release_dir,
        owner_dir=p.owner_dir,
        working_resolution=p.working_resolution,
        task=p.task,
        release_cfg=p.release_cfg,
        verify_cfg=p.verify_cfg,
        device=p.device,
        threads=snakemake.threads,
        quality_csv=snakemake.output.quality,
    )
