"""X-Mark (Kulkarni, Guo, Huang, arXiv 2602.09284): saliency-guided, clean-label, sample-specific
dataset watermark (docs/methods/xmark.md). Modules: :mod:`.generator` (conditional U-Net),
:mod:`.losses` (the multi-component objective), :mod:`.training` (resumable generator training),
:mod:`.release` (poison choice, decoys, marking), :mod:`.method` (X-Mark behind
the method interface of :mod:`medmark.methods.base`), :mod:`.config` (the section completed
from config/schema.yaml).
"""

from medmark.methods.xmark.config import resolve_xmark, xmark_defaults
from medmark.methods.xmark.generator import (
    MASK_KINDS,
    GeneratorConfig,
    XMarkGenerator,
    build_generator,
    load_generator,
    saliency_mask,
    save_generator,
)
from medmark.methods.xmark.losses import (
    TERMS,
    LpipsDistance,
    XMarkLoss,
    diagnostic_loss,
    efficacy_loss,
    laplacian_loss,
    lpips_l2_loss,
    random_rescale,
    ssim_l2_loss,
)
from medmark.methods.xmark.method import XMark
from medmark.methods.xmark.release import apply_generator, choose_decoys, choose_poisoned
from medmark.methods.xmark.training import (
    LOSS_COLUMNS,
    ArrayTriples,
    train_generator,
    write_loss_csv,
)

__all__ = [
    "LOSS_COLUMNS",
    "MASK_KINDS",
    "TERMS",
    "ArrayTriples",
    "GeneratorConfig",
    "LpipsDistance",
    "XMark",
    "XMarkGenerator",
    "XMarkLoss",
    "apply_generator",
    "build_generator",
    "choose_decoys",
    "choose_poisoned",
    "diagnostic_loss",
    "efficacy_loss",
    "laplacian_loss",
    "load_generator",
    "lpips_l2_loss",
    "random_rescale",
    "resolve_xmark",
    "saliency_mask",
    "save_generator",
    "ssim_l2_loss",
    "train_generator",
    "write_loss_csv",
    "xmark_defaults",
]
