"""Snakemake wrapper: attack x strength table and the p-value / BA vs strength plot."""

from medmark.logs import script_logging
from medmark.report import (
    attack_table,
    collect_summaries,
    markdown_table,
    plot_attacks,
    write_table,
)

alpha = snakemake.params.alpha
with script_logging(snakemake.log[0]):
    table = attack_table(collect_summaries(snakemake.input.summaries), alpha)
    cols = [
        "attack",
        "scenario",
        "arch",
        "models",
        "BA",
        "BA_drop",
        "AUROC",
        "WSR",
        "dP",
        "p_median",
        "rate_detected",
    ]
    md = markdown_table(table, cols) + (
        f"\nrate_detected (verdicts, α = {alpha}): detection rate for Malicious, false-positive rate otherwise. "
        "BA_drop = BA without attack − BA with it (what the attack costs the attacker).\n"
    )
    write_table(table, snakemake.output.csv, snakemake.output.md, md)
    plot_attacks(table, alpha, snakemake.output.png)
