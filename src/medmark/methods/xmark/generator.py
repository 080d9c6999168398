"""Conditional U-Net generator of X-Mark (paper §3; docs/methods/xmark.md).

``G(x, S(x)) -> (x', delta)``, ``x' = clip(x + delta)``, ``u`` the output of a small U-Net fed
``concat(x, S)`` (2 channels). Two carriers (config ``xmark.carrier.kind``):

- ``keyed`` (default, our extension): ``delta = epsilon * m(S) * a(x, S) * c_k`` with ``c_k`` the
  key's carrier (:mod:`.carrier`) and ``a = sigmoid(u + gain_bias)`` in ``(0, 1)`` a per-pixel
  gain. The key fixes the pattern; the U-Net decides, per image and pixel, how much of the budget
  to spend (where the mark is invisible, low-frequency and leaves the diagnosis alone). The same
  generator marks with any other key's carrier (``carrier_key=``): the decoy marks of the
  release and of verification.
- ``free`` (the paper as written; ablation ``free_mark``): ``delta = epsilon * tanh(u) * m(S)``.

``m(S)`` is the saliency mask (config ``xmark.mask``):
``soft_norm`` (default) ``m = max(floor, min(1, S / mean(S)))``: saliency decides *where* the
budget goes (above-average saliency gets all of it, the rest fades towards ``mask_floor``) without
shrinking the whole mark 4x as ``soft`` (``m = S``, mean saliency ~0.23 here) does;
``topq`` keeps the top ``q`` fraction of saliency pixels (``S >= quantile_{1-q}(S)`` and
``S > 0``) and blurs it with a Gaussian of sigma ``R/64``; ``uniform`` (``m = 1``) is the
no-saliency ablation (SSCL-BW-like). ``|delta| <= epsilon`` everywhere.

Design choices (documented, ours):

- GroupNorm rather than BatchNorm: the mark of an image never depends on which other images share
  its batch, and training and inference behave identically.
- Bilinear up-sampling + convolution in the decoder (no transposed convolutions, which add
  checkerboard high frequencies the Laplacian term would then have to fight).
- The last 1x1 convolution is **zero-initialised**: at step 0 the gain is ``sigmoid(gain_bias)``
  everywhere (keyed) or ``delta = 0`` (free); every other layer is initialised from the
  generator's seed (the key).
- Fully convolutional: any ``H, W``; inputs whose sides are not multiples of ``2**depth`` are
  reflect-padded up to the next multiple and the output is cropped back.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from medmark.io import atomic_path
from medmark.methods.xmark.carrier import CarrierConfig, keyed_carrier
from medmark.methods.xmark.config import resolve_xmark

MASK_KINDS: tuple[str, ...] = ("soft_norm", "soft", "topq", "uniform")
CARRIER_KINDS: tuple[str, ...] = ("keyed", "free")


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture and budget of :class:`XMarkGenerator` (config keys ``xmark.*``)."""

    base_channels: int = 16
    depth: int = 3
    epsilon: float = 0.0627
    mask_kind: str = "soft_norm"
    mask_topq: float = 0.3
    mask_floor: float = 0.75
    carrier_kind: str = "keyed"
    key: int = 0
    n_waves: int = 3
    band: tuple[float, float] = (3.0, 8.0)
    saturation: float = 5.0
    gain_bias: float = 3.0

    @classmethod
    def from_xmark(cls, xmark: dict[str, Any], key: int) -> GeneratorConfig:
        """Build from the ``xmark`` config section (missing keys take the schema defaults)."""
        xc = resolve_xmark(xmark)
        car = CarrierConfig.from_dict(xc["carrier"])
        return cls(
            base_channels=int(xc["base_channels"]),
            depth=int(xc["depth"]),
            epsilon=float(xc["epsilon"]),
            mask_kind=str(xc["mask"]),
            mask_topq=float(xc["mask_topq"]),
            mask_floor=float(xc["mask_floor"]),
            carrier_kind=str(xc["carrier"]["kind"]),
            key=int(key),
            n_waves=car.n_waves,
            band=car.band,
            saturation=car.saturation,
            gain_bias=float(xc["carrier"]["gain_bias"]),
        )


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _Block(nn.Sequential):
    """Two 3x3 convolutions, each followed by GroupNorm and SiLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.SiLU(),
        )


def saliency_mask(
    s: torch.Tensor, kind: str, topq: float = 0.3, floor: float = 0.75
) -> torch.Tensor:
    """The mask ``m(S)`` in ``[0, 1]`` for saliency ``s`` ``(N, 1, H, W)`` (module docstring)."""
    if kind == "soft_norm":
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"mask_floor must be in [0, 1], got {floor}")
        s = s.clamp(0.0, 1.0)
        mean = s.mean(dim=(-2, -1), keepdim=True)
        m = torch.where(mean > 0, s / mean.clamp_min(1e-12), torch.zeros_like(s))
        return m.clamp(0.0, 1.0).clamp_min(floor)
    if kind == "soft":
        return s.clamp(0.0, 1.0)
    if kind == "uniform":
        return torch.ones_like(s)
    if kind != "topq":
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    if not 0.0 < topq <= 1.0:
        raise ValueError(f"mask_topq must be in (0, 1], got {topq}")
    flat = s.flatten(1).float()
    thr = torch.quantile(flat, 1.0 - topq, dim=1).view(-1, 1, 1, 1)
    binary = ((s >= thr) & (s > 0)).to(s.dtype)
    sigma = max(s.shape[-1], s.shape[-2]) / 64.0
    k = 2 * math.ceil(2 * sigma) + 1
    blurred = kornia.filters.gaussian_blur2d(binary, (k, k), (sigma, sigma), border_type="constant")
    return blurred.clamp(0.0, 1.0)


class XMarkGenerator(nn.Module):
    """``G(x, S) -> (x', delta)``: conditional U-Net, bounded and saliency-masked (module docstring).

    ``x`` and ``s`` are ``float32 (N, 1, H, W)`` in ``[0, 1]``.
    """

    def __init__(
        self, config: GeneratorConfig | None = None, *, seed: int | None = None, **fields: Any
    ) -> None:
        """``config``, or the :class:`GeneratorConfig` fields as keywords (not both)."""
        super().__init__()
        if config is None:
            config = GeneratorConfig(**fields)
        elif fields:
            raise TypeError("pass either a GeneratorConfig or its fields, not both")
        if config.mask_kind not in MASK_KINDS:
            raise ValueError(f"mask_kind must be one of {MASK_KINDS}, got {config.mask_kind!r}")
        if config.carrier_kind not in CARRIER_KINDS:
            raise ValueError(
                f"carrier kind must be one of {CARRIER_KINDS}, got {config.carrier_kind!r}"
            )
        if config.depth < 1 or config.base_channels < 1:
            raise ValueError(
                f"depth and base_channels must be >= 1, got {config.depth}, {config.base_channels}"
            )
        if not 0.0 < config.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in (0, 1], got {config.epsilon}")
        self.config = config
        self._carriers: dict[tuple[int, int, int], torch.Tensor] = {}
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build()
        else:
            self._build()

    def _build(self) -> None:
        c, depth = self.config.base_channels, self.config.depth
        chans = [c * 2**k for k in range(depth + 1)]
        self.inc = _Block(2, chans[0])
        self.down = nn.ModuleList(_Block(chans[k], chans[k + 1]) for k in range(depth))
        self.up = nn.ModuleList(
            _Block(chans[k + 1] + chans[k], chans[k]) for k in reversed(range(depth))
        )
        self.out = nn.Conv2d(chans[0], 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def epsilon(self) -> float:
        return self.config.epsilon

    def mask(self, s: torch.Tensor) -> torch.Tensor:
        """The saliency mask ``m(S)`` this generator applies."""
        return saliency_mask(
            s, self.config.mask_kind, self.config.mask_topq, self.config.mask_floor
        )

    @property
    def keyed(self) -> bool:
        return self.config.carrier_kind == "keyed"

    def carrier(self, height: int, width: int, key: int | None = None) -> torch.Tensor:
        """The carrier of ``key`` (default: this generator's key) as ``(1, 1, H, W)`` float32."""
        k = self.config.key if key is None else int(key)
        cache_key = (k, height, width)
        if cache_key not in self._carriers:
            cfg = CarrierConfig(
                self.config.n_waves,
                tuple(self.config.band),  # type: ignore[arg-type]
                self.config.saturation,
            )
            c = torch.from_numpy(keyed_carrier(k, height, width, cfg))
            self._carriers[cache_key] = c.view(1, 1, height, width)
        return self._carriers[cache_key]

    def raw(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The unbounded U-Net output ``u`` at the input size (pads/crops, module docstring)."""
        h, w = x.shape[-2:]
        mult = 2**self.config.depth
        ph, pw = (-h) % mult, (-w) % mult
        z = torch.cat([x, s], dim=1)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            z = F.pad(z, (0, pw, 0, ph), mode=mode)
        feats = [self.inc(z)]
        for block in self.down:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        y = feats.pop()
        for block in self.up:
            skip = feats.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.out(y)[..., :h, :w]

    def forward(
        self, x: torch.Tensor, s: torch.Tensor, carrier_key: int | Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x', delta)``; ``delta`` is before clipping, ``x' = clip(x + delta, 0, 1)``.

        ``carrier_key`` marks with another key's carrier (decoys), one key for the batch or one
        per image; only for ``keyed`` carriers.
        """
        if x.ndim != 4 or x.shape[1] != 1 or s.shape != x.shape:
            raise ValueError(
                f"x and s must both be (N, 1, H, W); got {tuple(x.shape)} and {tuple(s.shape)}"
            )
        u = self.raw(x, s)
        if self.keyed:
            h, w = x.shape[-2:]
            if isinstance(carrier_key, Sequence):
                if len(carrier_key) != x.shape[0]:
                    raise ValueError(f"{len(carrier_key)} carrier keys for {x.shape[0]} images")
                c = torch.cat([self.carrier(h, w, int(k)) for k in carrier_key])
            else:
                c = self.carrier(h, w, carrier_key)
            c = c.to(x.device, x.dtype)
            gain = torch.sigmoid(u + self.config.gain_bias)
            delta = self.config.epsilon * self.mask(s) * gain * c
        else:
            if carrier_key is not None:
                raise ValueError("carrier_key needs a keyed carrier (xmark.carrier.kind: keyed)")
            delta = self.config.epsilon * torch.tanh(u) * self.mask(s)
        return (x + delta).clamp(0.0, 1.0), delta


def build_generator(cfg: GeneratorConfig, seed: int) -> XMarkGenerator:
    """A freshly, deterministically initialised generator (seed = the owner/independent key)."""
    return XMarkGenerator(cfg, seed=seed)


def save_generator(
    generator: XMarkGenerator, path: str | Path, meta: dict[str, Any] | None = None
) -> None:
    """Atomically save weights + architecture config (+ metadata such as key, train config)."""
    payload = {
        "kind": "xmark_generator",
        "config": asdict(generator.config),
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
        "meta": meta or {},
    }
    # Through a buffer: torch.save names the zip's inner folder after the file, and the atomic
    # temp name is random, so saving to the path would make the bytes (and the sha256 that
    # owner.json records) differ between identical runs.
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> XMarkGenerator:
    """Load a generator written by :func:`save_generator` (in eval mode; ``.meta`` attached)."""
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("kind") != "xmark_generator":
        raise ValueError(f"{path}: not an X-Mark generator checkpoint (kind != 'xmark_generator')")
    conf = dict(payload["config"])
    conf["band"] = tuple(conf.get("band", GeneratorConfig.band))
    gen = XMarkGenerator(GeneratorConfig(**conf))
    gen.load_state_dict(payload["state_dict"])
    gen.meta = payload.get("meta", {})  # type: ignore[attr-defined]
    return gen.eval()
