"""Snakemake wrapper: the comparison of methods (rows = methods), CSV and Markdown."""

import pandas as pd

from medmark.logs import script_logging
from medmark.report import collect_summaries, comparison_markdown, comparison_table, write_table

p = snakemake.params
with script_logging(snakemake.log[0]):
    quality = {
        m: pd.read_csv(path) for m, path in zip(p.methods, snakemake.input.quality, strict=True)
    }
    table = comparison_table(
        collect_summaries(snakemake.input.summaries), quality, p.resolution, p.label_modes
    )
    write_table(
        table, snakemake.output.csv, snakemake.output.md, comparison_markdown(table, p.alpha)
    )
