"""Snakemake wrapper: quick diagnostics of the owner's key (no suspect training)."""

from pathlib import Path

from medmark.logs import script_logging
from medmark.stages.xmark import diagnostics_stage

p = snakemake.params
with script_logging(snakemake.log[0]):
    diagnostics_stage(
        owner_dir=Path(snakemake.input.owner).parent,
        indep_owner_dirs={
            wm: Path(j).parent for wm, j in zip(p.indep_wms, snakemake.input.indep, strict=True)
        },
        proxy_model=snakemake.input.proxy,
        reference_models=dict(zip(p.archs, snakemake.input.references, strict=True)),
        resolution=p.resolution,
        input_resolution=p.input_resolution,
        verify_cfg=p.verify_cfg,
        device=p.device,
        threads=snakemake.threads,
        out_json=snakemake.output.json,
    )
