"""Snakemake wrapper: patient-disjoint release / verification / independent / test splits."""

from medmark.data.ingest import read_metadata
from medmark.data.splits import check_task_classes, patient_splits
from medmark.io import atomic_path
from medmark.logs import script_logging

p = snakemake.params
with script_logging(snakemake.log[0]) as log:
    metadata = read_metadata(snakemake.input.metadata)
    splits = patient_splits(
        metadata,
        dict(p.fractions),
        p.seed,
        stratify_on=p.stratify_on,
    )
    # before any model trains on a task the splits cannot support
    counts = check_task_classes(metadata, splits, dict(p.task), file=snakemake.output.splits)
    log.info("task classes per split (frontal): %s", counts)
    with atomic_path(snakemake.output.splits) as tmp:
        splits.to_csv(tmp, index=False)
    log.info("split sizes (images): %s", splits["split"].value_counts().to_dict())
