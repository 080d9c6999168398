"""Snakemake wrapper: release quality with and without the Laplacian term, side by side."""

import pandas as pd

from medmark.logs import script_logging
from medmark.report import markdown_table, write_table

with script_logging(snakemake.log[0]):
    rows = []
    for variant, path in snakemake.input.items():
        for rec in pd.read_csv(path).to_dict("records"):
            rows.append({"variant": variant, **rec})
    table = pd.DataFrame(rows)  # one row per (variant, resolution)
    cols = [
        "variant",
        "resolution",
        "psnr_mean",
        "ssim_mean",
        "linf_max_levels",
        "l2_mean_levels",
        "hf_share_mean",
        "hf_share_pooled",
    ]
    md = markdown_table(table, cols) + (
        "\nPSNR (dB) / SSIM between clean and watermarked images; L∞ max and mean L2 of δ in 8-bit "
        "grey levels; hf_share = share of δ's energy above half the Nyquist frequency (DCT).\n"
    )
    write_table(table, snakemake.output.csv, snakemake.output.md, md)
