"""Basin-hopping evolution of θ = (α, u, v) against a surrogate (Jia et al., ACM MM 2020,
"Basin Hopping Evolution"; Pu et al., arXiv 2303.09858, which optimises the same parameters).

Differential evolution whose mutation is a short basin-hopping run from each individual: a
population of ``population`` feasible θ is evolved for ``generations`` generations; in each, every
individual makes ``hops`` random hops (±``alpha_step`` in α, ±``pixel_step`` · side in u and v,
snapped to the nearest feasible position) with Metropolis acceptance at ``temperature``, the best
point of its chain is the mutant, binomial crossover (probability ``crossover``) mixes mutant and
parent coordinate-wise (an infeasible mix takes the mutant's position), and greedy selection keeps
the best of parent, mutant and trial. Every evaluation scores the whole population in one forward
batch of rendered, 8-bit-quantised images.

Objective: the true-class margin ``z_y − max_{k≠y} z_k`` (minimised). The search stops when the
best margin is ``< 0`` (first flip, ``kappa = 0``, Adv-watermark's rule) or ``<= −kappa``
(``kappa > 0``: barely flipped images transfer poorly), or when the next batch would exceed
``max_queries`` queries for the image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medmark.methods.medlocker.placement import Feasible
from medmark.methods.medlocker.render import render_u8, to_model_input

#: A model as the optimiser sees it: float32 ``(B, 1, H, W)`` in ``[0, 1]`` → logits ``(B, K)``.
ModelFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OptimConfig:
    """Settings of the basin-hopping evolution (defaults: Adv-watermark's, α capped at 0.8)."""

    population: int = 50
    generations: int = 3
    crossover: float = 0.9
    hops: int = 3
    alpha_min: float = 100 / 255
    alpha_max: float = 0.8
    alpha_step: float = 20 / 255
    pixel_step: float = 50 / 224  # fraction of the image side (±50 px at 224 px)
    temperature: float = 1.0
    kappa: float = 0.0
    max_queries: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "population": self.population >= 2,
            "generations": self.generations >= 0,
            "hops": self.hops >= 1,
            "crossover": 0.0 <= self.crossover <= 1.0,
            "alpha_min": 0.0 < self.alpha_min <= self.alpha_max,
            "alpha_max": self.alpha_max < 1.0,
            "temperature": self.temperature > 0,
            "kappa": self.kappa >= 0,
            "max_queries": self.max_queries >= self.population,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid medlocker optimiser settings: {bad} ({self})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class LockResult:
    """The chosen θ of one image and how the search went."""

    alpha: float
    u: int
    v: int
    margin: float
    queries: int
    success: bool
    seconds: float
    history: list[float] = field(default_factory=list)  # best margin after each batch

    def as_row(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return d


def true_class_margin(logits: torch.Tensor, y: int) -> torch.Tensor:
    """``z_y − max_{k≠y} z_k`` per row."""
    other = logits.clone()
    other[:, y] = -math.inf
    return logits[:, y] - other.max(dim=1).values


def stopped(margin: float, kappa: float) -> bool:
    """First flip (``kappa = 0``: margin < 0) or the margin target (margin <= −kappa)."""
    return margin < 0 if kappa == 0 else margin <= -kappa


class _Scorer:
    """Renders and scores batches of θ, counts queries and keeps the best θ seen."""

    def __init__(
        self,
        model: ModelFn,
        image: np.ndarray,
        y: int,
        logo: tuple[torch.Tensor, torch.Tensor],
        cfg: OptimConfig,
        device: torch.device,
    ) -> None:
        self.model, self.image, self.y, self.logo = model, image, y, logo
        self.cfg, self.device = cfg, device
        self.queries = 0
        self.best = (math.inf, 0.0, 0, 0)
        self.history: list[float] = []

    def can(self, n: int) -> bool:
        return self.queries + n <= self.cfg.max_queries and not self.done

    @property
    def done(self) -> bool:
        return stopped(self.best[0], self.cfg.kappa)

    @torch.no_grad()
    def __call__(self, alpha: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        imgs = render_u8(self.image, *self.logo, alpha, u, v)
        logits = self.model(to_model_input(imgs).to(self.device))
        m = true_class_margin(logits.float(), self.y).cpu().numpy().astype(np.float64)
        self.queries += len(alpha)
        i = int(np.argmin(m))
        if m[i] < self.best[0]:
            self.best = (float(m[i]), float(alpha[i]), int(u[i]), int(v[i]))
        self.history.append(self.best[0])
        return m


def optimise(
    model: ModelFn,
    image: np.ndarray,
    y: int,
    logo: tuple[torch.Tensor, torch.Tensor],
    feasible: Feasible,
    cfg: OptimConfig,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
) -> LockResult:
    """θ for one ``uint8 (H, W)`` image of true class ``y`` (logo = scaled ``(value, mask)``)."""
    t0 = time.perf_counter()
    p = cfg.population
    score = _Scorer(model, image, y, logo, cfg, torch.device(device))
    step = cfg.pixel_step * image.shape[0]
    alpha = rng.uniform(cfg.alpha_min, cfg.alpha_max, p)
    u, v = feasible.sample(p, rng)
    f = score(alpha, u, v)
    for _ in range(cfg.generations):
        if not score.can(p):
            break
        # Mutation: a basin-hopping chain from each individual; its best point is the mutant.
        ca, cu, cv, cf = alpha.copy(), u.copy(), v.copy(), f.copy()
        ba, bu, bv, bf = alpha.copy(), u.copy(), v.copy(), f.copy()
        for _hop in range(cfg.hops):
            if not score.can(p):
                break
            pa = np.clip(ca + rng.uniform(-cfg.alpha_step, cfg.alpha_step, p), *_arange(cfg))
            pu, pv = feasible.snap(
                cu + rng.uniform(-step, step, p), cv + rng.uniform(-step, step, p)
            )
            pf = score(pa, pu, pv)
            with np.errstate(over="ignore"):
                metropolis = rng.random(p) < np.exp(-(pf - cf) / cfg.temperature)
            acc = (pf < cf) | metropolis
            ca, cu, cv, cf = (
                np.where(acc, new, old) for new, old in _zip4(pa, pu, pv, pf, ca, cu, cv, cf)
            )
            imp = pf < bf
            ba, bu, bv, bf = (
                np.where(imp, new, old) for new, old in _zip4(pa, pu, pv, pf, ba, bu, bv, bf)
            )
        # Greedy: a mutant better than its parent replaces it.
        better = bf < f
        alpha, u, v, f = (
            np.where(better, new, old) for new, old in _zip4(ba, bu, bv, bf, alpha, u, v, f)
        )
        if not score.can(p):
            break
        # Binomial crossover of mutant and parent (one coordinate always from the mutant).
        take = rng.random((p, 3)) < cfg.crossover
        take[np.arange(p), rng.integers(0, 3, p)] = True
        ta = np.where(take[:, 0], ba, alpha)
        tu = np.where(take[:, 1], bu, u)
        tv = np.where(take[:, 2], bv, v)
        bad = ~feasible.ok(tu, tv)
        tu[bad], tv[bad] = bu[bad], bv[bad]
        tf = score(ta, tu, tv)
        sel = tf <= f
        alpha, u, v, f = (
            np.where(sel, new, old) for new, old in _zip4(ta, tu, tv, tf, alpha, u, v, f)
        )
    m, a, bu_, bv_ = score.best
    return LockResult(
        alpha=a,
        u=bu_,
        v=bv_,
        margin=m,
        queries=score.queries,
        success=score.done,
        seconds=time.perf_counter() - t0,
        history=score.history,
    )


def _arange(cfg: OptimConfig) -> tuple[float, float]:
    return cfg.alpha_min, cfg.alpha_max


def _zip4(*arrays: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(new_i, old_i)`` of 4 new and 4 old arrays."""
    return list(zip(arrays[:4], arrays[4:], strict=True))


def random_placement(
    feasible: Feasible, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The control: ``n`` uniformly random feasible positions (used with the optimised α)."""
    return feasible.sample(n, rng)


@torch.no_grad()
def margins(
    model: ModelFn, images_u8: torch.Tensor, y: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """True-class margins of ``uint8 (B, H, W)`` images of one class ``y``."""
    logits = model(to_model_input(images_u8).to(torch.device(device)))
    return true_class_margin(logits.float(), y).cpu().numpy()
