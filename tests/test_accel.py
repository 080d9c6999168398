"""The GPU feeding path (medmark.accel) on a CPU: off is the plain float32 NCHW step bit for bit,
channels-last and bf16 run on a CPU, and loaders with workers give the same batches as without.

The references below are the training loops as they were before the switches existed, written
out by hand: the default path must reproduce them exactly.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medmark.data.datasets import Labeled, WithSaliency
from medmark.data.h5 import H5Images, H5ImageWriter
from medmark.methods.xmark import ArrayTriples, train_generator
from medmark.methods.xmark.config import resolve_xmark
from medmark.methods.xmark.generator import GeneratorConfig, build_generator
from medmark.methods.xmark.losses import XMarkLoss
from medmark.resumable import epoch_seed
from medmark.train import TrainConfig, augment_batch, train_classifier

CPU = torch.device("cpu")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _toy(n: int = 32, r: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, r, r, generator=g) * 0.5
    y = torch.arange(n) % 2
    x[y == 1, :, 4:10, 4:10] += 0.5
    return TensorDataset(x.clamp(0, 1), y)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _history(tmp: Path, tag: str) -> list[float]:
    return [h["loss"] for h in torch.load(tmp / f"{tag}.pt", weights_only=False)["history"]]


def _reference_classifier(ds: TensorDataset, cfg: TrainConfig, seed: int) -> nn.Module:
    """The pre-switch loop of ``train_classifier`` (float32, NCHW, no autocast)."""
    model = _net()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    for epoch in range(cfg.epochs):
        es = epoch_seed(seed, epoch)
        torch.manual_seed(es)
        aug_gen = torch.Generator().manual_seed(es + 1)
        loader = DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(es),
            drop_last=True,
        )
        model.train()
        for x, y in loader:
            x = augment_batch(x.to(CPU, torch.float32), aug_gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return model


def _classifier(tmp: Path, ds: TensorDataset, cfg: TrainConfig, tag: str) -> nn.Module:
    model = _net()
    train_classifier(model, ds, cfg, seed=1, device=CPU, last_path=tmp / f"{tag}.pt")
    return model


def test_classifier_default_is_the_plain_step_and_switches_run_on_cpu(tmp_path: Path) -> None:
    """Breakage guarded: a switch applied while off (e.g. ``Accel.autocast`` returning a bf16
    autocast whatever ``bf16`` says) changes the default path's weights."""
    ds, cfg = _toy(), TrainConfig(epochs=2, batch_size=8, lr=1e-2)
    default = _classifier(tmp_path, ds, cfg, "default")
    assert _same(default, _reference_classifier(ds, cfg, seed=1))
    last = torch.load(tmp_path / "default.pt", weights_only=False)
    assert "bf16" not in last["config"]  # older checkpoints (without the keys) still resume

    cl_cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, channels_last=True)
    nhwc = _classifier(tmp_path, ds, cl_cfg, "cl")
    assert next(nhwc.parameters()).is_contiguous(memory_format=torch.channels_last)
    # same maths in another kernel order: equal losses to float precision (the weights drift
    # apart by up to Adam's step size where a gradient component is near zero)
    assert _history(tmp_path, "cl")[0] == pytest.approx(_history(tmp_path, "default")[0], rel=1e-5)

    bf16_cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, bf16=True)
    bf16 = _classifier(tmp_path, ds, bf16_cfg, "bf16")
    assert all(torch.isfinite(p).all() for p in bf16.parameters())
    assert not _same(default, bf16)  # autocast really ran in bfloat16
    assert torch.load(tmp_path / "bf16.pt", weights_only=False)["config"]["bf16"] is True


def _triples(n: int = 16, r: int = 16) -> ArrayTriples:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, r, r), dtype=np.uint8)
    yy, xx = np.mgrid[0:r, 0:r] / r
    sal = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.1).astype(np.float32)
    return ArrayTriples(images, np.repeat(sal[None], n, 0), np.arange(n) % 2)


XM = {"epochs": 2, "batch_size": 8, "base_channels": 4, "depth": 2, "lr": 0.01}


def _reference_generator(data: ArrayTriples, key: int) -> nn.Module:
    """The pre-switch loop of ``train_generator`` (float32, NCHW, no autocast)."""
    xc = resolve_xmark(XM)
    generator = build_generator(GeneratorConfig.from_xmark(xc, key), seed=key)
    surrogate = _net().eval()
    for p in surrogate.parameters():
        p.requires_grad_(False)
    objective = XMarkLoss(surrogate, xc, target_class=1)
    opt = torch.optim.Adam(generator.parameters(), lr=float(xc["lr"]))
    for epoch in range(int(xc["epochs"])):
        es = epoch_seed(key, epoch)
        torch.manual_seed(es)
        scale_gen = torch.Generator().manual_seed(es + 1)
        loader = DataLoader(
            data,
            batch_size=8,
            shuffle=True,
            generator=torch.Generator().manual_seed(es),
            drop_last=True,
        )
        generator.train()
        for x, s, y in loader:
            x_wm, delta = generator(x, s)
            c = generator.carrier(x.shape[-2], x.shape[-1])
            full = generator.epsilon * generator.mask(s) * c
            terms = objective(x, x_wm, delta, torch.as_tensor(y), scale_gen, full=full)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
    return generator


def _generator(tmp: Path, data: ArrayTriples, tag: str, **switches: bool) -> nn.Module:
    return train_generator(
        data,
        _net(),
        {**XM, **switches},
        key=3,
        device=CPU,
        last_path=tmp / f"{tag}_last.pt",
        loss_csv=tmp / f"{tag}.csv",
    )


def test_generator_default_is_the_plain_step_and_channels_last_runs_on_cpu(tmp_path: Path) -> None:
    """Breakage guarded: as for the classifier, a switch applied while off."""
    data = _triples()
    default = _generator(tmp_path, data, "default")
    assert _same(default, _reference_generator(data, key=3))
    _generator(tmp_path, data, "cl", channels_last=True)
    first = [pd.read_csv(tmp_path / f"{tag}.csv")["total"].iloc[0] for tag in ("default", "cl")]
    assert first[1] == pytest.approx(first[0], rel=1e-5)


def _prep(tmp: Path, n: int = 40, r: int = 8) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    path = tmp / "r.h5"
    with H5ImageWriter(path, n, r) as w:
        for i in range(n):
            labels = np.full(14, np.nan, dtype=np.float32)
            w.append(
                rng.integers(0, 256, (r, r), dtype=np.uint8), f"i{i}", f"p{i}", "release", labels
            )
    sal = tmp / "s.h5"
    with h5py.File(sal, "w") as f:
        f["maps"] = rng.random((n, r, r)).astype(np.float16)
        f.create_dataset("ids", data=[f"i{i}" for i in range(n)], dtype=h5py.string_dtype())
    return path, sal


@pytest.mark.parametrize("workers", [1, 2])
def test_loaders_with_workers_give_the_same_batches(tmp_path: Path, workers: int) -> None:
    """Shuffled loaders of (x, s, y) and (x, y) with worker processes (each opening its own HDF5
    handles: the parent's are open before the fork) yield exactly the batches of ``num_workers=0``.

    Breakage guarded: ``WithSaliency``'s batched read returning maps in sorted instead of
    requested order."""
    path, sal = _prep(tmp_path)
    rows = np.arange(40)[::-1].copy()
    y = np.arange(40) % 2
    triples = WithSaliency(Labeled(H5Images(path, indices=rows), y), sal)
    pairs = Labeled(H5Images(path, indices=rows), y)
    triples[0], pairs[0]  # noqa: B018 - open the parent's handles before the workers fork

    def batches(ds: torch.utils.data.Dataset, n: int) -> list[tuple[torch.Tensor, ...]]:
        loader = DataLoader(
            ds,
            batch_size=7,
            shuffle=True,
            generator=torch.Generator().manual_seed(5),
            num_workers=n,
            multiprocessing_context="fork" if n else None,
        )
        return [tuple(b) for b in loader]

    for ds in (triples, pairs):
        want, got = batches(ds, 0), batches(ds, workers)
        assert len(want) == len(got) == 6
        for a, b in zip(want, got, strict=True):
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    order = [0, 17, 3, 3, 39]
    with h5py.File(sal) as f:
        want = f["maps"][:][rows[order]]
    for i, (x, s, label), item in zip(
        order, triples.__getitems__(order), map(triples.__getitem__, order), strict=True
    ):
        assert torch.equal(s[0], torch.from_numpy(want[order.index(i)].astype(np.float32)))
        assert torch.equal(x, item[0]) and torch.equal(s, item[1]) and label == item[2]
