"""X-Mark generator and its training (paper §3.2-3.3, docs/methods/xmark.md; resumability).

Tests of the paper's generator as written use ``carrier_kind="free"``; the keyed carrier has its
own tests in tests/test_xmark_carrier.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medmark.methods.xmark import (
    LOSS_COLUMNS,
    TERMS,
    ArrayTriples,
    GeneratorConfig,
    XMarkGenerator,
    apply_generator,
    build_generator,
    load_generator,
    saliency_mask,
    save_generator,
    train_generator,
)
from medmark.models import build_classifier
from medmark.quality import high_frequency_energy, release_quality

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _blob(n: int, r: int, radius: float = 0.25) -> torch.Tensor:
    """Smooth saliency: a Gaussian blob, exactly 0 outside a disc (like a thresholded CAM)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, r), torch.linspace(0, 1, r), indexing="ij")
    d2 = (yy - 0.5) ** 2 + (xx - 0.4) ** 2
    s = torch.exp(-d2 / (2 * (radius / 2) ** 2)) * (d2 < radius**2)
    return s.expand(n, 1, r, r).contiguous()


def _loud(gen: XMarkGenerator, std: float = 2.0) -> XMarkGenerator:
    """Replace the zero-initialised output layer by large weights so tanh saturates."""
    torch.manual_seed(123)
    with torch.no_grad():
        nn.init.normal_(gen.out.weight, std=std)
        nn.init.normal_(gen.out.bias, std=std)
    return gen


@pytest.mark.parametrize("kind", ["soft", "topq", "uniform"])
def test_output_bounded_and_masked(kind: str) -> None:
    gen = _loud(
        XMarkGenerator(
            base_channels=8,
            depth=3,
            carrier_kind="free",
            epsilon=0.05,
            mask_kind=kind,
            mask_topq=0.3,
            seed=0,
        )
    )
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    s = _blob(3, 32)
    with torch.no_grad():
        x_wm, delta = gen(x, s)
        m = gen.mask(s)
    assert x_wm.shape == x.shape and delta.shape == x.shape
    assert float(x_wm.min()) >= 0.0 and float(x_wm.max()) <= 1.0
    assert float(delta.abs().max()) <= 0.05 + 1e-7
    assert float(delta.abs().max()) > 0.02  # the bound is not trivially met
    assert torch.equal(x_wm, (x + delta).clamp(0, 1))
    if kind == "uniform":
        assert torch.equal(m, torch.ones_like(s))
    else:
        zero = m == 0
        assert 0.3 < float(zero.float().mean()) < 0.95
        assert float(delta[zero].abs().max()) == 0.0
        assert torch.equal(x_wm[zero], x[zero])


def test_topq_mask_keeps_top_fraction_and_zero_map_gives_zero_mask() -> None:
    s = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # smooth, like a CAM
        s = torch.nn.functional.avg_pool2d(s, 9, stride=1, padding=4)
    m = saliency_mask(s, "topq", 0.2)
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    half = float((m > 0.5).float().mean())  # the blur keeps the 0.5 level set near the threshold
    support = float((m > 0).float().mean())  # and widens the support by its radius only
    assert 0.17 < half < 0.23 and 0.2 < support < 0.5
    assert float(saliency_mask(torch.zeros_like(s), "topq", 0.2).abs().max()) == 0.0
    with pytest.raises(ValueError):
        saliency_mask(s, "nope")


def test_any_size_runs_and_crops_back() -> None:
    gen = _loud(XMarkGenerator(base_channels=4, depth=3, carrier_kind="free", seed=0))
    x, s = torch.rand(2, 1, 37, 45), torch.rand(2, 1, 37, 45)
    with torch.no_grad():
        x_wm, delta = gen(x, s)
    assert x_wm.shape == (2, 1, 37, 45) and delta.shape == (2, 1, 37, 45)
    with pytest.raises(ValueError):
        gen(x, s[:, :, :36])


def test_zero_init_and_seeded_init() -> None:
    a, b, c = (
        XMarkGenerator(base_channels=8, depth=2, carrier_kind="free", seed=k) for k in (5, 5, 6)
    )
    x, s = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        x_wm, delta = a(x, s)
    assert torch.equal(x_wm, x) and float(delta.abs().max()) == 0.0
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_mark_of_an_image_does_not_depend_on_its_batch() -> None:
    gen = _loud(XMarkGenerator(base_channels=8, depth=3, carrier_kind="free", seed=0))
    x, s = torch.rand(4, 1, 32, 32), _blob(4, 32)
    with torch.no_grad():
        together = gen(x, s)[1]
        alone = gen(x[2:3], s[2:3])[1]
    assert torch.allclose(together[2:3], alone, atol=1e-6)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    gen = _loud(
        XMarkGenerator(
            base_channels=8,
            depth=2,
            carrier_kind="free",
            epsilon=0.02,
            mask_kind="topq",
            mask_topq=0.4,
            seed=1,
        )
    )
    save_generator(gen, tmp_path / "g.pt", {"key": 1})
    back = load_generator(tmp_path / "g.pt")
    assert back.config == GeneratorConfig(
        base_channels=8, depth=2, epsilon=0.02, mask_kind="topq", mask_topq=0.4, carrier_kind="free"
    )
    assert back.meta == {"key": 1}  # type: ignore[attr-defined]
    x, s = torch.rand(2, 1, 16, 16), _blob(2, 16)
    with torch.no_grad():
        assert torch.equal(gen.eval()(x, s)[0], back(x, s)[0])
    torch.save({"arch": "resnet18"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an X-Mark generator"):
        load_generator(tmp_path / "other.pt")
    with pytest.raises(ValueError):
        build_generator(GeneratorConfig(mask_kind="nope"), seed=0)


# --------------------------------------------------------------------------- training


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def _triples(n: int = 24, r: int = 16, seed: int = 0, noise: float = 0.1) -> ArrayTriples:
    """Smooth random 'radiographs' (Gaussian blobs + noise), a blob saliency, balanced labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:r, 0:r] / r
    img = np.zeros((n, r, r))
    for i in range(n):
        for _ in range(4):
            cy, cx, sg, a = rng.random(), rng.random(), 0.1 + 0.2 * rng.random(), rng.random()
            img[i] += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sg**2))
    img = img / img.max(axis=(1, 2), keepdims=True) * 0.8 + noise * rng.standard_normal(img.shape)
    images = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    sal = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / (2 * 0.25**2)).astype(np.float32)
    labels = rng.permutation(np.arange(n) % 2)
    return ArrayTriples(images, np.repeat(sal[None], n, 0), labels)


TINY = {"epochs": 3, "batch_size": 8, "base_channels": 4, "depth": 2, "lr": 0.01}


def _train(
    tmp: Path,
    data: ArrayTriples,
    cfg: dict,
    key: int = 3,
    tag: str = "a",
    surrogate: nn.Module | None = None,
) -> XMarkGenerator:
    return train_generator(
        data,
        surrogate if surrogate is not None else _tiny_net(),
        cfg,
        key=key,
        device=CPU,
        last_path=tmp / f"{tag}_last.pt",
        loss_csv=tmp / f"{tag}_loss.csv",
    )


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_array_triples_validates() -> None:
    data = _triples(4)
    x, s, y = data[1]
    assert x.shape == s.shape == (1, 16, 16) and y in (0, 1)
    assert float(x.max()) <= 1.0 and x.dtype == torch.float32
    with pytest.raises(ValueError, match="0 or 1"):
        ArrayTriples(data.images.numpy(), data.saliency.numpy(), np.array([0, 1, -1, 0]))
    with pytest.raises(ValueError, match="uint8"):
        ArrayTriples(data.images.numpy().astype(np.float32), data.saliency.numpy(), data.labels)


def test_training_logs_every_term_and_is_deterministic(tmp_path: Path) -> None:
    data = _triples()
    surrogate = _tiny_net()
    before = {k: v.clone() for k, v in surrogate.state_dict().items()}
    a = _train(tmp_path, data, TINY, tag="a", surrogate=surrogate)
    assert not any(p.requires_grad for p in surrogate.parameters())  # frozen
    assert all(torch.equal(before[k], v) for k, v in surrogate.state_dict().items())
    b = _train(tmp_path, data, TINY, tag="b")
    c = _train(tmp_path, data, TINY, key=4, tag="c")
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    log = pd.read_csv(tmp_path / "a_loss.csv")
    assert list(log.columns) == list(LOSS_COLUMNS)
    assert log["epoch"].tolist() == [0, 1, 2]
    assert (log[list(TERMS)] >= 0).all().all() and (log["seconds"] > 0).all()
    assert log["vis"].iloc[-1] > 0  # the mark grew from the zero-initialised output
    assert a.meta["key"] == 3 and len(a.meta["history"]) == 3  # type: ignore[attr-defined]


class _Interrupt(RuntimeError):
    """Raised by the test to simulate a kill after a checkpoint."""


class _Crashing(torch.utils.data.Dataset):
    """Raises after ``limit`` items: a job killed in the middle of an epoch."""

    def __init__(self, inner: ArrayTriples, limit: int) -> None:
        self.inner, self.limit, self.calls = inner, limit, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):  # noqa: ANN204 - same item type as the inner dataset
        self.calls += 1
        if self.calls > self.limit:
            raise _Interrupt("killed")
        return self.inner[i]


def test_resume_after_interrupted_epoch_gives_identical_weights(tmp_path: Path) -> None:
    """Killed in epoch 1 of 3, rerun: same weights, and only epochs 1 and 2 run after the kill.

    Breakage guarded: the checkpoint load in ``train_generator`` disabled (a rerun restarts from
    epoch 0). Each epoch is re-seeded from ``(key, epoch)`` and the init from the key (which the
    checkpoint fingerprint pins), so a restart ends on the same weights; the guard is the number
    of items the resumed run fetches: two epochs' worth, not three.
    """
    data = _triples()
    full = _train(tmp_path, data, TINY, tag="full")
    with pytest.raises(_Interrupt):
        _train(tmp_path, _Crashing(data, limit=len(data) + 12), TINY, tag="cut")  # type: ignore[arg-type]
    state = torch.load(tmp_path / "cut_last.pt", weights_only=False)
    assert state["epoch"] == 0  # epoch 1 was interrupted, only epoch 0 was saved
    assert len(pd.read_csv(tmp_path / "cut_loss.csv")) == 1
    counting = _Crashing(data, limit=10**9)  # never crashes: counts the items fetched
    resumed = _train(tmp_path, counting, TINY, tag="cut")  # type: ignore[arg-type]
    assert counting.calls == 2 * len(data)  # epochs 1 and 2 (24 items = 3 full batches of 8)
    assert _same_weights(full, resumed)
    assert len(pd.read_csv(tmp_path / "cut_loss.csv")) == 3
    with pytest.raises(ValueError, match="another config/key"):
        _train(tmp_path, data, {**TINY, "lr": 0.02}, tag="cut")


@pytest.mark.slow
def test_laplacian_term_lowers_high_frequency_share(tmp_path: Path) -> None:
    """Real measured comparison: same data, key and surrogate; only lambda_lap differs.

    32x32 textured images, 64 of them, random-weight ResNet-18 surrogate, 3 epochs. The
    Laplacian term is the budget-normalised pyramid (``relative: false``). The high-frequency
    share (DCT energy above half Nyquist, :mod:`medmark.quality`) of the float perturbation must
    be clearly lower with the term, and also lower on the quantised release images.
    """
    data = _triples(n=64, r=32, seed=0)
    cfg = {
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.01,
        "laplacian": {"relative": False},
        # the paper's generator as measured before the keyed carrier: free pattern, m = S, no
        # clean-model silence (a keyed carrier's frequencies are fixed by the key, so the
        # Laplacian term can only shape its gain there)
        "carrier": {"kind": "free"},
        "mask": "soft",
        "lambdas": {"silence": 0.0},
    }
    share, qshare = {}, {}
    for name, lap in (("default", 1.0), ("no_laplacian", 0.0)):
        gen = train_generator(
            data,
            build_classifier("resnet18", seed=0),
            {**cfg, "lambdas": {"silence": 0.0, "lap": lap}},
            key=1,
            device=CPU,
            last_path=tmp_path / f"{name}.pt",
            loss_csv=tmp_path / f"{name}.csv",
        )
        images, sal = data.images.numpy(), data.saliency.numpy()
        with torch.no_grad():
            x = torch.from_numpy(images).float().div(255).unsqueeze(1)
            _, delta = gen(x, torch.from_numpy(sal).unsqueeze(1))
        hf, total = high_frequency_energy(delta.squeeze(1).numpy())
        share[name] = hf.sum() / total.sum()
        wm = apply_generator(gen, images, sal, 32, CPU)
        q = release_quality(images, wm)["summary"]
        assert q["n_unchanged"] == 0
        qshare[name] = q["hf_share_pooled"]
    assert share["no_laplacian"] > 3 * share["default"], share
    assert qshare["no_laplacian"] > qshare["default"], qshare


def test_saved_generator_bytes_do_not_depend_on_the_file_name(tmp_path: Path) -> None:
    """owner.json records generator.pt's sha256: identical runs (local or through Slurm) must
    write identical bytes. Breakage guarded: torch.save straight to the atomic temp path, whose
    random name ends up inside the zip archive."""
    from medmark.io import sha256_file

    gen = XMarkGenerator(base_channels=4, depth=2, key=1, seed=0)
    save_generator(gen, tmp_path / "a.pt", {"key": 1})
    save_generator(gen, tmp_path / "other_name.pt", {"key": 1})
    assert sha256_file(tmp_path / "a.pt") == sha256_file(tmp_path / "other_name.pt")


def test_apply_generator_records_no_autograd_graph() -> None:
    """The release marks whole batches at full resolution: recording their autograd graph would
    hold every activation (gigabytes at 448 px). Breakage guarded: ``@torch.no_grad`` dropped
    from ``apply_generator``."""
    gen = build_generator(GeneratorConfig(base_channels=4, depth=2), seed=0)
    seen: list[bool] = []
    gen.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    images = np.zeros((3, 16, 16), dtype=np.uint8)
    apply_generator(gen, images, np.ones((3, 16, 16), dtype=np.float32), 2, CPU)
    assert seen == [False, False]
