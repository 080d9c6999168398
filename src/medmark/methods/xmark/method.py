"""X-Mark behind the :class:`~medmark.methods.base.WatermarkMethod` interface (X-Mark paper
§3.4: clean-label, sample-specific, saliency-conditioned; docs/methods/xmark.md).

The generator is fitted by its own resumable, cached stage
(:func:`medmark.stages.xmark.generator_stage`), so :meth:`XMark.for_release` loads the fitted
generator and :meth:`XMark.fit` refuses to run. Marks: :func:`.release.apply_generator`
(quantised to 8 bits). Extra group ``decoys``: non-target release rows marked with fresh decoy
keys' carriers (our extension; :func:`.release.choose_decoys`). Secret: ``generator.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medmark.io import sha256_file
from medmark.methods.base import Group, Selection, WatermarkMethod
from medmark.methods.xmark.carrier import decoy_keys
from medmark.methods.xmark.generator import XMarkGenerator, load_generator, save_generator
from medmark.methods.xmark.release import apply_generator, choose_decoys, choose_poisoned


class XMark(WatermarkMethod):
    """X-Mark with a fitted ``generator`` (key = the generator's key)."""

    name: ClassVar[str] = "xmark"
    label_mode = "clean"
    verification = "targeted"
    needs_saliency: ClassVar[bool] = True
    citation: ClassVar[str] = (
        "Kulkarni, Guo, Huang, X-Mark: Saliency-Guided Robust Dataset Ownership Verification "
        "for Medical Imaging, arXiv 2602.09284 (2026)"
    )

    def __init__(
        self,
        key: int,
        target_class: int,
        cfg: dict[str, Any],
        *,
        generator: XMarkGenerator,
        device: torch.device,
        batch_size: int = 64,
        decoy_rate: float = 0.0,
        n_verify_decoys: int = 0,
        generator_meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(key, target_class, cfg)
        if (decoy_rate > 0 or n_verify_decoys > 0) and not generator.keyed:
            raise ValueError("decoy negatives need a keyed carrier (xmark.carrier.kind: keyed)")
        self.generator = generator.eval().to(device)
        self.device = device
        self.batch_size = int(batch_size)
        self.decoy_rate = float(decoy_rate)
        self.n_verify_decoys = int(n_verify_decoys)
        # No wall-clock data in the secret: its sha256 (in owner.json) must be the same on every
        # run and executor (the per-epoch history with its timings stays in loss.csv).
        self.generator_meta = {k: v for k, v in (generator_meta or {}).items() if k != "history"}
        self.scores: dict[str, float] | None = None

    @classmethod
    def for_release(
        cls,
        key: int,
        target_class: int,
        cfg: Mapping[str, Any],
        *,
        task: Mapping[str, Any],
        inputs: Mapping[str, Any],
        device: Any,
    ) -> XMark:
        """From the fitted ``inputs["generator"]``; ``cfg``: ``decoys`` (``rate``, ``verify``),
        ``poison_choice`` and, for ``"hard"``, ``surrogate_resolution`` with
        ``inputs["surrogate"]`` and ``inputs["prep_working"]`` (release.poison_choice)."""
        from medmark.models import load_classifier
        from medmark.stages.xmark import target_scores

        generator = load_generator(inputs["generator"]).to(device)
        method = cls(
            key,
            target_class,
            cfg,
            generator=generator,
            device=device,
            decoy_rate=float(cfg["decoys"]["rate"]) if generator.keyed else 0.0,
            n_verify_decoys=int(cfg["decoys"]["verify"]) if generator.keyed else 0,
            generator_meta=getattr(generator, "meta", None),
        )
        if cfg["poison_choice"] == "hard":
            method.scores = target_scores(
                load_classifier(inputs["surrogate"]),
                inputs["prep_working"],
                dict(task),
                int(cfg["surrogate_resolution"]),
                device,
            )
        return method

    def poison_scores(self) -> dict[str, float] | None:
        return self.scores

    def fit(self, images: np.ndarray, labels: np.ndarray, device: Any) -> None:
        raise NotImplementedError(
            "X-Mark's generator is fitted by medmark.stages.xmark.generator_stage (resumable, "
            "cached per key); build XMark from the fitted generator"
        )

    def select(
        self,
        labels: np.ndarray,
        poison_rate: float,
        seed: int,
        scores: np.ndarray | None = None,
    ) -> Selection:
        poisoned = choose_poisoned(labels, self.target_class, poison_rate, seed, scores)
        decoys = np.zeros(0, dtype=np.int64)
        if self.decoy_rate > 0:
            decoys = choose_decoys(labels, self.target_class, len(poisoned), self.decoy_rate, seed)
        return Selection(
            {
                "poisoned": Group(poisoned),
                "decoys": Group(decoys, keys=decoy_keys(self.key, len(decoys))),
            }
        )

    def mark(
        self,
        images: np.ndarray,
        *,
        saliency: np.ndarray | None = None,
        keys: list[int] | None = None,
        group: str = "poisoned",
    ) -> np.ndarray:
        if saliency is None:
            raise ValueError("X-Mark marks need the saliency maps of the images")
        return apply_generator(self.generator, images, saliency, self.batch_size, self.device, keys)

    def verification_decoys(
        self, clean: np.ndarray, saliency: np.ndarray | None
    ) -> np.ndarray | None:
        if not self.n_verify_decoys:
            return None
        return np.stack(
            [
                self.mark(clean, saliency=saliency, keys=[k] * len(clean))
                for k in decoy_keys(self.key, self.n_verify_decoys, stream=1)
            ]
        )

    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        gen_path = owner_dir / "generator.pt"
        save_generator(self.generator, gen_path, {**self.generator_meta, "key": self.key})
        return {
            "epsilon": float(self.generator.config.epsilon),
            "decoy_rate": self.decoy_rate,
            "n_verify_decoys": self.n_verify_decoys,
            "generator": {
                "file": gen_path.name,
                "sha256": sha256_file(gen_path),
                "config": dict(self.generator.config.__dict__),
            },
        }

    def budget(self) -> dict[str, float]:
        return {"linf": float(self.generator.config.epsilon)}
