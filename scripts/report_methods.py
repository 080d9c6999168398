"""Snakemake wrapper: X-Mark's and MedLocker's report sections side by side (one Markdown page)."""

from medmark.io import write_text_atomic
from medmark.logs import script_logging
from medmark.report import methods_markdown

i, o = snakemake.input, snakemake.output
with script_logging(snakemake.log[0]):
    xmark = {k[len("xmark_") :]: v for k, v in i.items() if k.startswith("xmark_")}
    medlocker = {k[len("medlocker_") :]: v for k, v in i.items() if k.startswith("medlocker_")}
    write_text_atomic(o.md, methods_markdown(out=o.md, xmark=xmark, medlocker=medlocker))
