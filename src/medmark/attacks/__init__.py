"""Adaptive attacks on dataset-ownership verification (docs/methods/attacks.md), by BackdoorBox verb.

* :mod:`~medmark.attacks.spec` — the ``{attack}`` wildcard grammar (parse/format, kind);
* :mod:`~medmark.attacks.repair` — model repair: fine-tuning, fine-pruning, distillation;
* :mod:`~medmark.attacks.query` — query-time pre-processing: scaling, JPEG, blur, median;
* :mod:`~medmark.attacks.filtering` — dataset filtering by spectral signatures;
* :mod:`~medmark.attacks.apply` — the entry points and the registry used by the pipeline.
"""

from medmark.attacks.apply import (
    REGISTRY,
    AttackConfig,
    AttackEntry,
    apply_data_attack,
    apply_model_attack,
    apply_query_attack,
)
from medmark.attacks.query import TransformedBlackBox, build_query_transform
from medmark.attacks.spec import (
    FAMILIES,
    GRAMMAR,
    WILDCARD_REGEX,
    AttackSpec,
    attack_family,
    attack_kind,
    format_attack,
    parse_attack,
)

__all__ = [
    "FAMILIES",
    "GRAMMAR",
    "REGISTRY",
    "WILDCARD_REGEX",
    "AttackConfig",
    "AttackEntry",
    "AttackSpec",
    "TransformedBlackBox",
    "apply_data_attack",
    "apply_model_attack",
    "apply_query_attack",
    "attack_family",
    "attack_kind",
    "build_query_transform",
    "format_attack",
    "parse_attack",
]
