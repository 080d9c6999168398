"""Snakemake wrapper: decode, filter frontal views, resize and store one resolution in HDF5."""

import json
from pathlib import Path

from medmark import __version__
from medmark.data.preprocess import preprocess_to_h5
from medmark.io import sha256_file
from medmark.logs import script_logging

p = snakemake.params
with script_logging(snakemake.log[0]) as log:
    manifest = json.loads(Path(snakemake.input.manifest).read_text())
    stats = preprocess_to_h5(
        snakemake.input.metadata,
        snakemake.input.splits,
        manifest["root"],
        p.resolution,
        snakemake.output.h5,
        None,  # images were validated at ingest: results/data/quarantine.csv is the quarantine
        on_bad_image="error",
        provenance={
            "source_sha256": sha256_file(snakemake.input.manifest),
            "config_hash": p.config_hash,
            "created_by": f"medmark {__version__} rule preprocess",
        },
        compression_level=p.compression_level,
        workers=snakemake.threads,
    )
    log.info("preprocess stats: %s", stats)
