"""Snakemake wrapper: ΔP and p against a swept setting (poisoning rate or training length)."""

from medmark.io import atomic_path
from medmark.logs import script_logging
from medmark.report import collect_summaries, plot_sweep

p = snakemake.params
with script_logging(snakemake.log[0]):
    df = collect_summaries(snakemake.input.summaries)
    df[p.column] = df["variant"].map(p.values)
    with atomic_path(snakemake.output.csv) as tmp:
        df.to_csv(tmp, index=False)
    plot_sweep(df, p.column, p.xlabel, snakemake.output.png, p.alpha)
