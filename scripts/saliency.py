"""Snakemake wrapper: batched EigenCAM maps of every image of one resolution."""

from medmark.logs import script_logging
from medmark.models import load_classifier
from medmark.runtime import resolve_device, set_threads
from medmark.saliency import write_saliency_h5

p = snakemake.params
with script_logging(snakemake.log[0]):
    set_threads(snakemake.threads)
    write_saliency_h5(
        snakemake.input.h5,
        load_classifier(snakemake.input.model),
        snakemake.output.h5,
        target_layer=p.target_layer,
        batch_size=p.batch_size,
        device=resolve_device(p.device),
        provenance={"surrogate": snakemake.input.model},
    )
