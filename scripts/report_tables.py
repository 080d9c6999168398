"""Snakemake wrapper: tidy verification CSV and the scenario x arch Markdown table."""

from medmark.logs import script_logging
from medmark.report import collect_summaries, scenario_table, verification_markdown, write_table

with script_logging(snakemake.log[0]):
    tidy = collect_summaries(snakemake.input.summaries)
    table = scenario_table(tidy, snakemake.params.alpha)
    write_table(
        tidy,
        snakemake.output.csv,
        snakemake.output.md,
        verification_markdown(table, snakemake.params.alpha),
    )
