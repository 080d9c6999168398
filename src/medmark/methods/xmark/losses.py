"""The X-Mark multi-component objective (paper §3.3; docs/methods/xmark.md, "Objective").

``L = l_eff_t * L_eff(target) + l_eff_n * L_eff(non-target) + l_scale * L_eff o rescale
+ l_diag * L_diag + l_vis * L_vis + l_lap * L_lap + l_silence * L_silence``; each term is a
separate, non-negative function here and :class:`XMarkLoss` returns all of them (logged per epoch
by the trainer).

- Efficacy, ``keyed`` carrier (our extension, docs/methods/xmark.md): the key fixes the pattern,
  so efficacy is how much of the full-budget keyed mark ``M = epsilon m(S) c_k`` the generator
  keeps: ``1 - <delta, M> / <M, M>`` on target-class and on non-target images (two terms, two
  weights). What makes a suspect *learn* the mark is the release (carrier + decoy negatives,
  :mod:`.release`), measured by the generator's diagnostics, not a surrogate's reaction.
- Efficacy, ``free`` carrier (the paper as written; SSCL-BW lineage, arXiv 2510.26420):
  cross-entropy of the frozen surrogate on the watermarked image to the target label ``y_t``, on
  target-class and on non-target images. Measured here: it crafts a transferable adversarial
  pattern that clean models answer too (ablation ``free_mark``).
- Scale robustness: the same efficacy after an antialiased down-scale of the watermarked batch by
  a random factor from ``scale_range`` (one factor per batch, from a passed
  ``torch.Generator``) and bilinear up-scaling back (keyed: retention of ``R(delta)`` against
  ``R(M)``, so gain patterns that rescaling destroys are penalised).
- Diagnostic preservation: ``KL(f(x) || f(x'))`` on target-class images, i.e. on the images that
  are watermarked in the release, whose diagnosis must not change (0 when ``delta = 0``).
- Silence of clean models (COMBAT's clean-model loss, Huynh et al., AAAI 2024, §3.2): the frozen
  surrogate is a clean model, so on non-target images
  ``mean [P(y_t | x') - P(y_t | x) - silence_margin]_+`` must stay 0: the mark may not be
  evidence for ``y_t`` to a model that never saw the release (the Ind-M scenario).
- Visual: ``1 - SSIM(x, x') + mean(delta^2)`` (kornia SSIM, 11x11 Gaussian window), or
  ``LPIPS(x, x') + mean(delta^2)`` when ``visual.kind = lpips`` (needs local AlexNet weights,
  see :class:`LpipsDistance`).
- Laplacian (scale invariance): ``pyramid`` mode ``sum_{k<levels} 2^-k mean(l_k^2)`` over the
  band-pass levels ``l_k`` of kornia's Laplacian pyramid of ``delta``; ``operator`` mode
  ``mean(laplacian_3x3(delta)^2)``. ``relative: true`` divides by ``mean(delta^2) + 1e-8`` so the
  term penalises the *share* of high-frequency energy, not the amplitude (which ``vis`` handles);
  ``relative: false`` divides by ``epsilon^2`` (energy in units of the budget).
  **Measured caveat**: the share's gradient grows like ``1/|delta|``; from a zero-initialised
  ``free`` generator it dominates Adam's first steps and drives ``delta`` to ~0, while
  ``relative: false`` keeps the mark. ``relative: false`` is the recommended setting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from medmark.methods.xmark.config import resolve_xmark
from medmark.train import resize_batch

TERMS: tuple[str, ...] = ("eff_target", "eff_nontarget", "scale", "diag", "vis", "lap", "silence")
RELATIVE_EPS = 1e-8


def _zero(ref: torch.Tensor) -> torch.Tensor:
    return ref.new_zeros(())


def _grad_if(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext() if enabled else torch.no_grad()


def efficacy_loss(logits: torch.Tensor, target_class: int) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` to ``target_class`` (0 for an empty batch)."""
    if logits.shape[0] == 0:
        return _zero(logits)
    y = torch.full((logits.shape[0],), int(target_class), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, y)


def retention_loss(delta: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``1 - <delta, M> / <M, M>``: the share of the full-budget keyed mark ``M`` not kept
    (0 when ``delta = M``, 1 when ``delta = 0``; 0 for an empty batch or ``M = 0``)."""
    if delta.shape[0] == 0:
        return _zero(delta)
    den = full.pow(2).sum()
    if float(den) == 0.0:
        return _zero(delta)
    return (1.0 - (delta * full).sum() / den).clamp_min(0.0)


def silence_loss(
    logits_clean: torch.Tensor, logits_wm: torch.Tensor, target_class: int, margin: float
) -> torch.Tensor:
    """``mean [P(y_t|x') - P(y_t|x) - margin]_+`` under a clean model (0 for an empty batch)."""
    if logits_wm.shape[0] == 0:
        return _zero(logits_wm)
    p_wm = F.softmax(logits_wm, dim=1)[:, target_class]
    p_clean = F.softmax(logits_clean, dim=1)[:, target_class]
    return F.relu(p_wm - p_clean - margin).mean()


def random_rescale(
    x: torch.Tensor, scale_range: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Antialiased down-scale by ``f ~ U(scale_range)`` and bilinear up-scale back to ``x``'s size.

    ``f`` is drawn on the CPU from ``generator`` (one factor per call = per batch).
    """
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1, got {scale_range}")
    f = lo + (hi - lo) * float(torch.rand((), generator=generator))
    h, w = x.shape[-2:]
    small = (max(1, round(h * f)), max(1, round(w * f)))
    if small == (h, w):
        return x, f
    down = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False), f


def diagnostic_loss(logits_clean: torch.Tensor, logits_wm: torch.Tensor) -> torch.Tensor:
    """``KL(f(x) || f(x'))`` per image, batch mean; exactly 0 when the logits are equal."""
    if logits_clean.shape[0] == 0:
        return _zero(logits_wm)
    log_p = F.log_softmax(logits_clean, dim=1)
    log_q = F.log_softmax(logits_wm, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return kl.clamp_min(0.0)


def ssim_l2_loss(x: torch.Tensor, x_wm: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``1 - mean SSIM(x, x') + mean(delta^2)`` (kornia SSIM, window 11, data range 1)."""
    ssim = kornia.metrics.ssim(x, x_wm, window_size=11, max_val=1.0).mean()
    return (1.0 - ssim).clamp_min(0.0) + delta.pow(2).mean()


class LpipsDistance(nn.Module):
    """LPIPS (Zhang et al., CVPR 2018; AlexNet, linear heads v0.1) without any download.

    The linear heads ship inside torchmetrics (``lpips_models/alex.pth``); the AlexNet backbone
    must be a local file: ``weights`` is a torchvision AlexNet ``state_dict`` (the file torchvision
    saves for ``AlexNet_Weights.IMAGENET1K_V1``, ``alexnet-owt-7be5be79.pth``; only its
    ``features.*`` entries are used, the classifier may be left out). Grayscale inputs in
    ``[0, 1]`` are repeated to 3 channels. Frozen, eval mode.
    """

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        import torchvision
        from torchmetrics.functional.image.lpips import _LPIPS

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"xmark.visual.lpips_weights: {path} is not a file (a torchvision AlexNet "
                "state_dict, e.g. alexnet-owt-7be5be79.pth, is needed for LPIPS)"
            )
        alex = torchvision.models.alexnet(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state_dict, got {type(state).__name__}")
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        try:
            alex.features.load_state_dict(features)
        except RuntimeError as e:
            raise ValueError(f"{path}: no torchvision AlexNet 'features.*' weights ({e})") from e
        net = _LPIPS(pretrained=True, net="alex", pnet_rand=True)
        for slice_ in (
            net.net.slice1,
            net.net.slice2,
            net.net.slice3,
            net.net.slice4,
            net.net.slice5,
        ):
            for name, module in slice_.named_children():
                module.load_state_dict(alex.features[int(name)].state_dict())
        self.net = net.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> LpipsDistance:
        """Stay in eval mode whatever ``mode`` is (a frozen metric)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS ``(N,)`` between ``[0, 1]`` batches ``(N, 1|3, H, W)``."""
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.net(x, y, normalize=True).flatten()


def lpips_l2_loss(
    lpips: LpipsDistance, x: torch.Tensor, x_wm: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """``mean LPIPS(x, x') + mean(delta^2)``."""
    return lpips(x, x_wm).mean().clamp_min(0.0) + delta.pow(2).mean()


def laplacian_loss(
    delta: torch.Tensor,
    mode: str = "pyramid",
    levels: int = 2,
    relative: bool = True,
    epsilon: float = 1.0,
) -> torch.Tensor:
    """High-frequency energy of ``delta`` (module docstring); 0 for a constant ``delta``.

    ``relative=True`` divides by ``mean(delta^2) + 1e-8`` (the share of high frequencies);
    ``relative=False`` divides by ``epsilon^2`` (the energy in units of the L-inf budget, so that
    a weight of 1 is meaningful whatever ``epsilon``).
    """
    if mode == "pyramid":
        if levels < 1:
            raise ValueError(f"laplacian.levels must be >= 1, got {levels}")
        pyr = kornia.geometry.transform.build_laplacian_pyramid(delta, levels + 1)
        energy = pyr[0].pow(2).mean()
        for k in range(1, levels):
            energy = energy + 2.0**-k * pyr[k].pow(2).mean()
    elif mode == "operator":
        energy = kornia.filters.laplacian(delta, 3).pow(2).mean()
    else:
        raise ValueError(f"laplacian.mode must be pyramid or operator, got {mode!r}")
    if relative:
        energy = energy / (delta.pow(2).mean() + RELATIVE_EPS)
    else:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        energy = energy / float(epsilon) ** 2
    return energy.clamp_min(0.0)


class XMarkLoss:
    """All terms of the objective for one batch, weighted by ``xmark.lambdas``.

    ``surrogate`` is frozen by the caller (eval, no parameter gradients); ``surrogate_resolution``
    resizes (antialiased) every surrogate input when the surrogate was trained at another size.
    """

    def __init__(
        self,
        surrogate: nn.Module,
        xmark: dict[str, Any],
        *,
        target_class: int,
        surrogate_resolution: int | None = None,
    ) -> None:
        self.surrogate = surrogate
        self.target_class = int(target_class)
        self.surrogate_resolution = surrogate_resolution
        xc = resolve_xmark(xmark)
        self.lambdas = {k: float(xc["lambdas"][k]) for k in TERMS}
        self.scale_range = (float(xc["scale_range"][0]), float(xc["scale_range"][1]))
        self.lap_mode = str(xc["laplacian"]["mode"])
        self.lap_levels = int(xc["laplacian"]["levels"])
        self.lap_relative = bool(xc["laplacian"]["relative"])
        self.epsilon = float(xc["epsilon"])
        self.silence_margin = float(xc["silence_margin"])
        visual = xc["visual"]
        self.visual_kind = str(visual["kind"])
        self._visual: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
        if self.visual_kind == "ssim_l2":
            self._visual = ssim_l2_loss
        elif self.visual_kind == "lpips":
            weights = visual["lpips_weights"]
            if not weights:
                raise ValueError(
                    "xmark.visual.kind is 'lpips' but xmark.visual.lpips_weights is not set: "
                    "LPIPS needs local AlexNet weights (nothing is downloaded); point "
                    "lpips_weights at a torchvision AlexNet state_dict or use kind: ssim_l2"
                )
            self.lpips = LpipsDistance(weights)
            self._visual = lambda x, xw, d: lpips_l2_loss(self.lpips, x, xw, d)
        else:
            raise ValueError(
                f"xmark.visual.kind must be ssim_l2 or lpips, got {self.visual_kind!r}"
            )

    def to(self, device: torch.device) -> XMarkLoss:
        if self.visual_kind == "lpips":
            self.lpips.to(device)
        return self

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        return self.surrogate(resize_batch(x, self.surrogate_resolution))

    def __call__(
        self,
        x: torch.Tensor,
        x_wm: torch.Tensor,
        delta: torch.Tensor,
        y: torch.Tensor,
        scale_generator: torch.Generator,
        full: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Terms and ``total`` for a batch: clean ``x``, watermarked ``x_wm``, ``delta``, labels
        ``y``; ``full`` is the full-budget keyed mark ``M`` (keyed carrier) or ``None`` (free)."""
        is_t = y == self.target_class
        is_n = ~is_t
        logits_wm = self._f(x_wm)
        with torch.no_grad():
            logits_clean = self._f(x)
        terms: dict[str, torch.Tensor] = {}
        if full is not None:
            terms["eff_target"] = retention_loss(delta[is_t], full[is_t])
            terms["eff_nontarget"] = retention_loss(delta[is_n], full[is_n])
            with _grad_if(self.lambdas["scale"] > 0):
                d_rs, f = random_rescale(delta, self.scale_range, scale_generator)
                m_rs, _ = random_rescale(full, (f, f), scale_generator)
                terms["scale"] = retention_loss(d_rs, m_rs)
        else:
            terms["eff_target"] = efficacy_loss(logits_wm[is_t], self.target_class)
            terms["eff_nontarget"] = efficacy_loss(logits_wm[is_n], self.target_class)
            # A term whose weight is 0 is still computed (and logged), without building its graph.
            with _grad_if(self.lambdas["scale"] > 0):
                x_rs, _ = random_rescale(x_wm, self.scale_range, scale_generator)
                terms["scale"] = efficacy_loss(self._f(x_rs), self.target_class)
        with _grad_if(self.lambdas["diag"] > 0):
            terms["diag"] = diagnostic_loss(logits_clean[is_t], logits_wm[is_t])
        with _grad_if(self.lambdas["silence"] > 0):
            terms["silence"] = silence_loss(
                logits_clean[is_n], logits_wm[is_n], self.target_class, self.silence_margin
            )
        terms["vis"] = self._visual(x, x_wm, delta)
        terms["lap"] = laplacian_loss(
            delta, self.lap_mode, self.lap_levels, self.lap_relative, self.epsilon
        )
        total = _zero(x_wm)
        for k in TERMS:
            if self.lambdas[k] > 0:
                total = total + self.lambdas[k] * terms[k]
        terms["total"] = total
        return terms
