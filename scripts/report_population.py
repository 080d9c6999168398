"""Snakemake wrapper: false-positive rates of the population target with Clopper-Pearson CIs."""

from medmark.io import atomic_path, write_text_atomic
from medmark.logs import script_logging
from medmark.report import collect_summaries, markdown_table, rate_intervals

p = snakemake.params
with script_logging(snakemake.log[0]):
    table = rate_intervals(collect_summaries(snakemake.input.summaries), p.confidence)
    with atomic_path(snakemake.output.csv) as tmp:
        table.to_csv(tmp, index=False)
    legend = (
        f"\nrate = share of 'detected' verdicts (summary.json); [ci_low, ci_high] = exact "
        f"{p.confidence:.0%} Clopper-Pearson interval. Malicious: detection rate; every other "
        "scenario: false-positive rate.\n"
    )
    write_text_atomic(snakemake.output.md, markdown_table(table) + legend)
