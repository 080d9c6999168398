"""Snakemake wrapper: lock a split against one source model (MedLocker)."""

from medmark.logs import script_logging
from medmark.stages.medlocker import lock_stage

p, i, o = snakemake.params, snakemake.input, snakemake.output
with script_logging(snakemake.log[0]):
    lock_stage(
        prep_h5=i.prep,
        boxes_csv=i.boxes,
        metadata_csv=i.metadata,
        saliency_h5=i.get("saliency"),
        source_model=i.model,
        source_id=p.source_id,
        input_resolution=p.input_resolution,
        logo_path=i.logo,
        task=p.task,
        cfg=p.cfg,
        code=p.code,
        device=p.device,
        threads=snakemake.threads,
        out_locked=o.locked,
        out_random=o.random,
        out_params=o.params,
        out_queries=o.queries,
        out_certificate=o.certificate,
        out_public_key=o.public_key,
        owner_dir=p.owner_dir,
    )
