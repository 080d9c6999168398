"""Snakemake wrapper: one method's page of the HTML report (its verdicts, its attack rows)."""

from medmark.io import write_text_atomic
from medmark.logs import script_logging
from medmark.report import collect_summaries, method_card_markdown

p = snakemake.params
with script_logging(snakemake.log[0]):
    tidy = collect_summaries(snakemake.input.summaries)
    md = method_card_markdown(
        tidy, snakemake.wildcards.method, p.label_mode, p.verification, p.alpha
    )
    write_text_atomic(snakemake.output.md, md)
