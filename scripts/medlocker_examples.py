"""Snakemake wrapper: MedLocker examples (original | locked | footprint vs lesion boxes)."""

from medmark.logs import script_logging
from medmark.stages.medlocker import examples_stage

p, i, o = snakemake.params, snakemake.input, snakemake.output
with script_logging(snakemake.log[0]):
    examples_stage(
        prep_h5=i.prep,
        lock=p.lock,
        boxes_csv=i.boxes,
        metadata_csv=i.metadata,
        n=p.n,
        out_png=o.png,
    )
