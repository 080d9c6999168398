"""Snakemake wrapper: train one suspect model (scenario decided by the rule's inputs/params)."""

from medmark.logs import script_logging
from medmark.stages.classifiers import train_and_save

p = snakemake.params
with script_logging(snakemake.log[0]):
    train_and_save(
        train_h5=snakemake.input.train,
        train_split=p.split,
        test_h5=snakemake.input.test,
        arch=p.arch,
        task=p.task,
        train_cfg=p.train_cfg,
        seed=p.seed,
        input_resolution=p.input_resolution,
        device=p.device,
        threads=snakemake.threads,
        out_model=snakemake.output.model,
        out_last=p.last,
        out_history=snakemake.output.history,
        out_metrics=snakemake.output.metrics,
        meta=p.meta,
    )
