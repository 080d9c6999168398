"""Snakemake wrapper: train the owner's surrogate classifier on the release split."""

from medmark.logs import script_logging
from medmark.stages.classifiers import train_and_save

p = snakemake.params
with script_logging(snakemake.log[0]):
    train_and_save(
        train_h5=snakemake.input.h5,
        train_split="release",
        test_h5=snakemake.input.h5,
        arch=p.arch,
        task=p.task,
        train_cfg=p.train_cfg,
        seed=p.seed,
        seed_stream=p.seed_stream,
        input_resolution=p.input_resolution,
        device=p.device,
        threads=snakemake.threads,
        out_model=snakemake.output.model,
        out_last=p.last,
        out_history=snakemake.output.history,
        out_metrics=snakemake.output.metrics,
        meta={"role": "surrogate"},
    )
