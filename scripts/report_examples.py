"""Snakemake wrapper: example release images, amplified perturbation and saliency overlay."""

import json
from pathlib import Path

from medmark.logs import script_logging
from medmark.report import example_rows, plot_examples

p = snakemake.params
with script_logging(snakemake.log[0]):
    poisoned = json.loads(Path(snakemake.input.owner).read_text())["poisoned_ids"][: p.n]
    clean, marked, saliency = example_rows(
        snakemake.input.clean, snakemake.input.release, snakemake.input.saliency, poisoned
    )
    plot_examples(clean, marked, saliency, p.amplify, snakemake.output.png)
