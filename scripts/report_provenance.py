"""Snakemake wrapper: the report's provenance page and the audit of the results tree."""

from medmark.logs import script_logging
from medmark.provenance_report import write_provenance_page

with script_logging(snakemake.log[0]):
    write_provenance_page(
        snakemake.params.tables,
        "results",
        snakemake.output.md,
        snakemake.output.audit,
    )
