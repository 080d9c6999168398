"""Stage-level functions: what one Snakemake rule does, called by its thin ``scripts/`` wrapper."""
