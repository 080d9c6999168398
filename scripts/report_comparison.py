"""Snakemake wrapper: the comparison of methods (rows = methods), un-attacked and under attack."""

import pandas as pd

from medmark.io import atomic_path
from medmark.logs import script_logging
from medmark.report import (
    collect_summaries,
    comparison_attack_table,
    comparison_markdown,
    comparison_table,
    write_table,
)

p = snakemake.params
out = snakemake.output
with script_logging(snakemake.log[0]):
    quality = {
        m: pd.read_csv(path) for m, path in zip(p.methods, snakemake.input.quality, strict=True)
    }
    tidy = collect_summaries([*snakemake.input.summaries, *snakemake.input.attacked])
    table = comparison_table(tidy, quality, p.resolution, p.label_modes)  # un-attacked rows
    attacked = comparison_attack_table(tidy, p.attacks)
    with atomic_path(out.attacks_csv) as tmp:
        attacked.to_csv(tmp, index=False)
    write_table(table, out.csv, out.md, comparison_markdown(table, p.alpha, attacked))
