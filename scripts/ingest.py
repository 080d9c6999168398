"""Snakemake wrapper: stage the configured source and write the normalised metadata table."""

from pathlib import Path

from medmark.data.ingest import ingest
from medmark.logs import script_logging

p = snakemake.params
with script_logging(snakemake.log[0]):
    ingest(
        p.source["source"],
        p.source["cfg"],
        Path(p.work_dir),
        Path(snakemake.output.metadata),
        Path(snakemake.output.boxes),
        Path(snakemake.output.manifest),
        Path(snakemake.output.quarantine),
        p.on_bad_image,
        workers=snakemake.threads,
    )
