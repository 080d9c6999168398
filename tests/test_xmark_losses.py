"""Loss terms of X-Mark (paper §3.3, docs/methods/xmark.md): non-negative, zero where they should be."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from medmark.methods.xmark import (
    TERMS,
    LpipsDistance,
    XMarkLoss,
    diagnostic_loss,
    efficacy_loss,
    laplacian_loss,
    random_rescale,
    resolve_xmark,
    ssim_l2_loss,
)

torch.set_num_threads(1)
SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


class TinyNet(nn.Module):
    """A small 2-way CNN standing in for the surrogate (input (N,1,H,W) in [0,1])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _frozen_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = TinyNet().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _batch(seed: int = 0, n: int = 6, r: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, r, r, generator=g)
    delta = (torch.rand(n, 1, r, r, generator=g) * 2 - 1) * 0.03
    return x, delta


def test_defaults_are_those_the_workflow_fills_in() -> None:
    """``resolve_xmark({})`` is the section Snakemake's validation fills into an empty config
    (rules/common.smk), value and type (``1`` is not ``1.0`` in a fingerprint or a JSON file)."""
    from snakemake.utils import validate

    cfg: dict = {}
    validate(cfg, str(SCHEMA))
    canon = functools.partial(json.dumps, sort_keys=True)
    assert canon(resolve_xmark({})) == canon(cfg["xmark"])


def test_defaults_follow_the_schema_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Change defaults in a copy of config/schema.yaml: ``resolve_xmark`` follows it.

    Breakage guarded: defaults copied into the package (they would keep the old values)."""
    import medmark.schema

    schema = yaml.safe_load(SCHEMA.read_text())
    xm = schema["properties"]["xmark"]["properties"]
    xm["epsilon"]["default"] = 0.05
    xm["laplacian"]["properties"]["levels"]["default"] = 4
    xm["lambdas"]["properties"]["silence"]["default"] = 3.0
    xm["resolution"]["default"] = 32  # beside a $ref
    changed = tmp_path / "schema.yaml"
    changed.write_text(yaml.safe_dump(schema, sort_keys=False))
    monkeypatch.setattr(medmark.schema, "SCHEMA_PATH", changed)
    xc = resolve_xmark({"lambdas": {"vis": 2.0}})
    assert xc["epsilon"] == 0.05 and xc["laplacian"]["levels"] == 4 and xc["resolution"] == 32
    assert xc["lambdas"]["silence"] == 3.0 and xc["lambdas"]["vis"] == 2.0
    assert xc["carrier"] == {k: v["default"] for k, v in xm["carrier"]["properties"].items()}


def test_resolve_rejects_unknown_keys_and_fills_defaults() -> None:
    xc = resolve_xmark({"laplacian": {"levels": 3}})
    assert xc["laplacian"] == {"mode": "pyramid", "levels": 3, "relative": False}
    schema = yaml.safe_load(SCHEMA.read_text())
    assert xc["epsilon"] == schema["properties"]["xmark"]["properties"]["epsilon"]["default"]
    with pytest.raises(ValueError, match="lambdas"):
        resolve_xmark({"lambdas": {"nope": 1.0}})
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_xmark({"epsilonn": 0.1})


def test_efficacy_is_cross_entropy_to_the_target() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-3.0, 3.0]])
    got = efficacy_loss(logits, 1)
    want = nn.functional.cross_entropy(logits, torch.ones(3, dtype=torch.long))
    assert torch.allclose(got, want)
    assert float(efficacy_loss(logits, 0)) >= 0
    assert float(efficacy_loss(logits[:0], 1)) == 0.0


def test_diagnostic_kl_zero_iff_same_prediction() -> None:
    logits = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    assert float(diagnostic_loss(logits, logits.clone())) == 0.0
    other = logits + torch.tensor([1.0, -1.0])
    assert float(diagnostic_loss(logits, other)) > 1e-3
    assert float(diagnostic_loss(logits[:0], other[:0])) == 0.0


def test_visual_zero_at_zero_delta_positive_otherwise() -> None:
    x, delta = _batch()
    zero = torch.zeros_like(x)
    assert abs(float(ssim_l2_loss(x, x.clone(), zero))) < 1e-6
    x_wm = (x + delta).clamp(0, 1)
    assert float(ssim_l2_loss(x, x_wm, delta)) > 1e-3


@pytest.mark.parametrize("mode", ["pyramid", "operator"])
@pytest.mark.parametrize("relative", [True, False])
def test_laplacian_constant_vs_checkerboard(mode: str, relative: bool) -> None:
    const = torch.full((2, 1, 32, 32), 0.02)
    assert float(laplacian_loss(const, mode, 2, relative, 0.03)) < 1e-12
    assert float(laplacian_loss(torch.zeros_like(const), mode, 2, relative, 0.03)) == 0.0
    idx = torch.arange(32)
    checker = (((idx[:, None] + idx[None, :]) % 2) * 2 - 1).float() * 0.02
    checker = checker.expand(2, 1, 32, 32).contiguous()
    value = float(laplacian_loss(checker, mode, 2, relative, 0.03))
    smooth = torch.linspace(-0.02, 0.02, 32).view(1, 1, 1, 32).expand(2, 1, 32, 32).contiguous()
    assert value > 0.05
    assert value > 100 * float(laplacian_loss(smooth, mode, 2, relative, 0.03))


def test_laplacian_relative_is_scale_free_and_absolute_is_in_budget_units() -> None:
    _, delta = _batch(3)
    rel1 = laplacian_loss(delta, relative=True)
    rel2 = laplacian_loss(2 * delta, relative=True)
    assert torch.allclose(rel1, rel2, rtol=1e-4)
    a1 = laplacian_loss(delta, relative=False, epsilon=0.03)
    assert torch.allclose(laplacian_loss(2 * delta, relative=False, epsilon=0.03), 4 * a1)
    assert torch.allclose(laplacian_loss(delta, relative=False, epsilon=0.06), a1 / 4)
    with pytest.raises(ValueError):
        laplacian_loss(delta, mode="nope")


def test_random_rescale_seeded_in_range_and_shape_preserving() -> None:
    x, _ = _batch()
    y1, f1 = random_rescale(x, (0.25, 1.0), torch.Generator().manual_seed(5))
    y2, f2 = random_rescale(x, (0.25, 1.0), torch.Generator().manual_seed(5))
    assert f1 == f2 and 0.25 <= f1 <= 1.0 and torch.equal(y1, y2)
    assert y1.shape == x.shape
    same, f = random_rescale(x, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert f == 1.0 and torch.equal(same, x)
    small, _ = random_rescale(x, (0.25, 0.25), torch.Generator().manual_seed(0))
    assert not torch.allclose(small, x)
    with pytest.raises(ValueError):
        random_rescale(x, (0.0, 1.0), torch.Generator())


def test_xmark_loss_terms_nonnegative_and_total_is_weighted_sum() -> None:
    """total = the configured weighted sum, with the weights written here, not read back from
    the code's resolver: three given (0.5, 2.0, 0.0), the other four at the documented defaults:
    1.0, silence at 10 (config/schema.yaml).

    Breakage guarded: given lambdas ignored (defaults used) or a term left out of the total;
    a test that took its weights from ``resolve_xmark`` would agree with a broken resolver.
    """
    x, delta = _batch(4)
    x_wm = (x + delta).clamp(0, 1)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    cfg = {"lambdas": {"eff_target": 0.5, "scale": 2.0, "lap": 0.0}}
    loss = XMarkLoss(_frozen_net(), cfg, target_class=1)
    terms = loss(x, x_wm, delta, y, torch.Generator().manual_seed(0))
    assert set(terms) == {*TERMS, "total"}
    assert all(float(v) >= 0 for v in terms.values())
    assert float(terms["lap"]) > 0  # computed and logged although its weight is 0
    lam = {"eff_target": 0.5, "eff_nontarget": 1.0, "scale": 2.0, "diag": 1.0, "vis": 1.0}
    lam["lap"] = 0.0
    lam["silence"] = 10.0  # the documented default of the clean-model silence term
    assert set(lam) == set(TERMS)
    want = sum(lam[k] * float(terms[k]) for k in TERMS)
    assert float(terms["total"]) == pytest.approx(want, rel=1e-5)


def test_xmark_loss_at_zero_delta() -> None:
    x, _ = _batch(6)
    y = torch.tensor([0, 1, 1, 0, 1, 1])
    loss = XMarkLoss(_frozen_net(), {}, target_class=1)
    terms = loss(x, x.clone(), torch.zeros_like(x), y, torch.Generator().manual_seed(0))
    assert float(terms["diag"]) < 1e-10
    assert abs(float(terms["vis"])) < 1e-6
    assert float(terms["lap"]) == 0.0
    assert float(terms["eff_target"]) > 0 and float(terms["eff_nontarget"]) > 0


def test_xmark_loss_gradient_flows_to_delta_only_through_weighted_terms() -> None:
    x, delta = _batch(7)
    delta.requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    off = dict.fromkeys(TERMS, 0.0)
    loss = XMarkLoss(_frozen_net(), {"lambdas": {**off, "eff_nontarget": 1.0}}, target_class=1)
    terms = loss(x, (x + delta).clamp(0, 1), delta, y, torch.Generator().manual_seed(0))
    terms["total"].backward()
    assert delta.grad is not None and float(delta.grad.abs().sum()) > 0
    assert float(terms["total"].detach()) == pytest.approx(float(terms["eff_nontarget"].detach()))


def test_lpips_needs_configured_local_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lpips_weights is not set"):
        XMarkLoss(_frozen_net(), {"visual": {"kind": "lpips"}}, target_class=1)
    with pytest.raises(FileNotFoundError, match="not a file"):
        XMarkLoss(
            _frozen_net(),
            {"visual": {"kind": "lpips", "lpips_weights": str(tmp_path / "missing.pth")}},
            target_class=1,
        )
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="AlexNet"):
        LpipsDistance(bad)


def test_lpips_with_local_alexnet_features(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet_features.pth"
    torch.save({f"features.{k}": v for k, v in alex.features.state_dict().items()}, path)
    lp = LpipsDistance(path)
    x, delta = _batch(8, n=2, r=64)
    assert float(lp(x, x.clone()).abs().max()) < 1e-6
    d = lp(x, (x + 5 * delta).clamp(0, 1))
    assert d.shape == (2,) and float(d.min()) > 0
    lp.train()
    assert not lp.training
    loss = XMarkLoss(
        _frozen_net(), {"visual": {"kind": "lpips", "lpips_weights": str(path)}}, target_class=1
    )
    terms = loss(x, x.clone(), torch.zeros_like(x), torch.tensor([0, 1]), torch.Generator())
    assert abs(float(terms["vis"])) < 1e-6
