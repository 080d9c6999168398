"""Snakemake wrapper: lock a split against one source model (MedLocker, the registered lock)."""

from medmark.logs import script_logging
from medmark.stages.medlocker import lock_stage

p, i = snakemake.params, snakemake.input
with script_logging(snakemake.log[0]):
    lock_stage(
        lock=p.lock,
        inputs={
            **{k: str(v) for k, v in i.items()},
            "source_id": p.source_id,
            "input_resolution": p.input_resolution,
            "code": p.code,
        },
        task=p.task,
        cfg=p.cfg,
        image_tree=p.image_tree,
        device=p.device,
        threads=snakemake.threads,
        release_dir=p.release_dir,
        owner_dir=p.owner_dir,
    )
