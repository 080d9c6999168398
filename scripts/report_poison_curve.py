"""Snakemake wrapper: WSR / ΔP / p-value of the Malicious suspect vs the poisoning rate."""

from medmark.io import atomic_path
from medmark.logs import script_logging
from medmark.report import collect_summaries, plot_poison_curve

p = snakemake.params
with script_logging(snakemake.log[0]):
    df = collect_summaries(snakemake.input.summaries)
    df["poison_rate"] = df["variant"].map(p.rates)
    with atomic_path(snakemake.output.csv) as tmp:
        df.to_csv(tmp, index=False)
    plot_poison_curve(df, snakemake.output.png, p.alpha)
