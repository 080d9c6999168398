"""MedLocker: an optimised visible watermark that stops unauthorised diagnosis (Pu, Wei, Zhao, Fu,
arXiv 2303.09858), built on the basin-hopping evolution of Adv-watermark (Jia et al., ACM MM
2020). docs/methods/medlocker.md describes the method and the choices made here.

Self-contained: placement (:mod:`.placement`), rendering (:mod:`.render`), optimiser
(:mod:`.optimize`), certificate (:mod:`.certificate`), restore packages (:mod:`.restore`) and the
logo (:mod:`.logo`); the stages live in :mod:`medmark.stages.medlocker`.
"""

from medmark.methods.medlocker.certificate import CertificateError, image_sha256
from medmark.methods.medlocker.logo import Logo, load_logo, write_default_logo
from medmark.methods.medlocker.optimize import LockResult, OptimConfig, optimise
from medmark.methods.medlocker.placement import Feasible, feasible_positions, forbidden_map
from medmark.methods.medlocker.render import render_u8
from medmark.methods.medlocker.restore import PackageError

__all__ = [
    "CertificateError",
    "Feasible",
    "LockResult",
    "Logo",
    "OptimConfig",
    "PackageError",
    "feasible_positions",
    "forbidden_map",
    "image_sha256",
    "load_logo",
    "optimise",
    "render_u8",
    "write_default_logo",
]
