"""Snakemake wrapper: black-box verification of one suspect (optionally behind a query attack)."""

from medmark.logs import script_logging
from medmark.stages.verification import run_verification, suspect_blackbox

p = snakemake.params
with script_logging(snakemake.log[0]):
    blackbox = suspect_blackbox(
        snakemake.input.model, device=p.device, input_resolution=p.input_resolution
    )
    if p.query_attack != "none":
        from medmark.attacks import apply_query_attack

        blackbox = apply_query_attack(p.query_attack, blackbox)
    run_verification(
        blackbox=blackbox,
        owner_json=snakemake.input.owner,
        verification_h5=snakemake.input.verification,
        verify_cfg=p.verify,
        labels=p.labels,
        out_summary=snakemake.output.summary,
        out_per_image=snakemake.output.per_image,
        threads=snakemake.threads,
    )
