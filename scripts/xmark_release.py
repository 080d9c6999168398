"""Snakemake wrapper: watermarked clean-label release, the owner's secret and release quality."""

from medmark.logs import script_logging
from medmark.stages.xmark import release_stage

p = snakemake.params
with script_logging(snakemake.log[0]):
    release_stage(
        prep=dict(zip(p.resolutions, snakemake.input.prep, strict=True)),
        saliency=dict(zip(p.resolutions, snakemake.input.saliency, strict=True)),
        generator_path=snakemake.input.generator,
        metadata_csv=snakemake.input.metadata,
        release_dir=p.release_dir,
        owner_dir=p.owner_dir,
        working_resolution=p.working_resolution,
        task=p.task,
        release_cfg=p.release_cfg,
        verify_cfg=p.verify_cfg,
        decoys=p.decoys,
        key=p.key,
        device=p.device,
        threads=snakemake.threads,
        quality_csv=snakemake.output.quality,
        surrogate_path=snakemake.input.surrogate,
        surrogate_resolution=p.surrogate_resolution,
    )
