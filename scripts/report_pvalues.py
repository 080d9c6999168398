"""Snakemake wrapper: p-value distribution per scenario (log scale, alpha line)."""

import pandas as pd

from medmark.logs import script_logging
from medmark.report import plot_pvalues

with script_logging(snakemake.log[0]):
    plot_pvalues(pd.read_csv(snakemake.input.csv), snakemake.params.alpha, snakemake.output.png)
