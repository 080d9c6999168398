"""Snakemake wrapper: the generator diagnostics as a Markdown table for the report."""

import json
from pathlib import Path

from medmark.io import write_text_atomic
from medmark.logs import script_logging
from medmark.report import diagnostics_markdown

with script_logging(snakemake.log[0]):
    diag = json.loads(Path(snakemake.input.json).read_text())
    write_text_atomic(snakemake.output.md, diagnostics_markdown(diag))
