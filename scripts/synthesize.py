"""Snakemake wrapper: generate the embedded synthetic CheXpert-format dataset."""

from pathlib import Path

from medmark.data.synthetic import generate_dataset
from medmark.logs import script_logging

with script_logging(snakemake.log[0]):
    generate_dataset(
        Path(snakemake.output.tree), preset=snakemake.params.preset, seed=snakemake.params.seed
    )
