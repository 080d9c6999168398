"""Snakemake wrapper: draw MedLocker's default logo (no downloaded asset)."""

from medmark.logs import script_logging
from medmark.methods.medlocker.logo import write_default_logo

with script_logging(snakemake.log[0]):
    write_default_logo(snakemake.output.png)
