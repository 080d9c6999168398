"""MedLocker library: placement, rendering, optimiser, certificate and restore packages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from medmark.methods.medlocker import certificate as cert_mod
from medmark.methods.medlocker import restore
from medmark.methods.medlocker.logo import load_logo, write_default_logo
from medmark.methods.medlocker.optimize import (
    OptimConfig,
    margins,
    optimise,
    random_placement,
)
from medmark.methods.medlocker.placement import (
    Feasible,
    feasible_positions,
    footprint_overlap,
    forbidden_map,
    placement,
    saliency_boxes,
)
from medmark.methods.medlocker.render import render_u8, to_model_input

R = 32


@pytest.fixture(scope="module")
def logo(tmp_path_factory):
    path = write_default_logo(tmp_path_factory.mktemp("logo") / "logo.png", side=64)
    return load_logo(path).scaled(8)


def _image(seed: int, r: int = R) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (r, r), dtype=np.uint8)


# ---------------------------------------------------------------- placement


@pytest.mark.parametrize("seed", range(5))
def test_feasible_positions_match_brute_force_and_avoid_dilated_boxes(seed):
    rng = np.random.default_rng(seed)
    boxes = np.sort(rng.uniform(0, R, (3, 2, 2)), axis=1).transpose(0, 2, 1).reshape(3, 4)
    boxes = boxes[:, [0, 2, 1, 3]]  # x0, y0, x1, y1
    margin, fh, fw = 2.0, 7, 9
    forb = forbidden_map(boxes, (R, R), margin)
    feas = feasible_positions(forb, fh, fw)
    brute = np.array(
        [
            [footprint_overlap(forb, u, v, fh, fw) == 0 for u in range(R - fw + 1)]
            for v in range(R - fh + 1)
        ]
    )
    np.testing.assert_array_equal(feas, brute)
    # every feasible footprint misses every box dilated by the margin (continuous geometry)
    for v, u in zip(*np.nonzero(feas), strict=True):
        for x0, y0, x1, y1 in boxes:
            overlap_x = u < x1 + margin and u + fw > x0 - margin
            overlap_y = v < y1 + margin and v + fh > y0 - margin
            assert not (overlap_x and overlap_y)


def test_snap_and_sample_return_feasible_positions():
    forb = forbidden_map(np.array([[8.0, 8.0, 24.0, 24.0]]), (R, R), 1.0)
    f = Feasible(feasible_positions(forb, 6, 6))
    rng = np.random.default_rng(0)
    u, v = f.snap(rng.uniform(-5, 40, 200), rng.uniform(-5, 40, 200))
    assert f.ok(u, v).all()
    u, v = f.sample(100, rng)
    assert f.ok(u, v).all()
    assert all(footprint_overlap(forb, a, b, 6, 6) == 0 for a, b in zip(u, v, strict=True))


def test_placement_falls_back_to_a_smaller_logo_or_none():
    forb = forbidden_map(np.array([[4.0, 4.0, 28.0, 28.0]]), (R, R), 0.0)
    f, i = placement(forb, [(10, 10), (4, 4)])
    assert i == 1 and f.map.any()
    assert placement(np.ones((R, R), bool), [(10, 10), (4, 4)]) is None


def test_saliency_boxes_cover_the_top_components():
    s = np.zeros((R, R))
    s[2:6, 3:9] = 1.0
    s[20:25, 20:22] = 0.9
    want = [(3, 2, 9, 6), (20, 20, 22, 25)]
    for frac in (0.03, 0.2):  # 0.2: the threshold falls on the background (its minimum)
        boxes = saliency_boxes(s, top_frac=frac)
        assert sorted(map(tuple, boxes.astype(int).tolist())) == want


# ---------------------------------------------------------------- rendering


def test_render_is_deterministic_quantised_and_local(logo):
    x = _image(0)
    a = np.array([0.5, 0.8, 0.4])
    u, v = np.array([0, 10, 24]), np.array([3, 20, 24])
    out = render_u8(x, *logo, a, u, v)
    assert out.dtype == torch.uint8 and out.shape == (3, R, R)
    assert torch.equal(out, render_u8(x, *logo, a, u, v))
    value, mask = (t.double().numpy() for t in logo)
    h, w = mask.shape
    for p in range(3):
        op = np.minimum(mask, a[p])
        want = x.astype(np.float64).copy()
        patch = want[v[p] : v[p] + h, u[p] : u[p] + w] / 255
        want[v[p] : v[p] + h, u[p] : u[p] + w] = np.round(255 * ((1 - op) * patch + op * value))
        np.testing.assert_array_equal(out[p].numpy(), want.astype(np.uint8))
        outside = np.ones((R, R), bool)
        outside[v[p] : v[p] + h, u[p] : u[p] + w] = False
        np.testing.assert_array_equal(out[p].numpy()[outside], x[outside])
        # one candidate alone renders the same as inside a batch
        assert torch.equal(out[p], render_u8(x, *logo, a[p : p + 1], u[p : p + 1], v[p : p + 1])[0])


def test_render_refuses_a_footprint_outside_the_image(logo):
    with pytest.raises(ValueError, match="outside"):
        render_u8(_image(0), *logo, [0.5], [R - 2], [0])


# ---------------------------------------------------------------- optimiser


class _Region(torch.nn.Module):
    """Toy 2-class model: class 1 iff the mean of a 6x6 corner patch is dark."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        z = 1.0 - 4.0 * x[:, 0, 24:30, 24:30].mean(dim=(1, 2))
        return torch.stack([-z, z], dim=1)


def _dark_corner(seed: int) -> np.ndarray:
    x = _image(seed)
    x[20:32, 20:32] = 10
    return x


def test_optimiser_beats_random_placement_on_a_toy_model(logo):
    model = _Region()
    cfg = OptimConfig(population=16, generations=3, hops=2, max_queries=200, pixel_step=0.3)
    free = Feasible(feasible_positions(np.zeros((R, R), bool), *logo[1].shape))
    opt_m, rand_m, queries = [], [], []
    for seed in range(6):
        x = _dark_corner(seed)
        res = optimise(model, x, 1, logo, free, cfg, np.random.default_rng(seed))
        queries.append(res.queries)
        opt = render_u8(x, *logo, [res.alpha], [res.u], [res.v])
        ru, rv = random_placement(free, 1, np.random.default_rng(100 + seed))
        rnd = render_u8(x, *logo, [res.alpha], ru, rv)
        opt_m.append(float(margins(model, opt, 1)[0]))
        rand_m.append(float(margins(model, rnd, 1)[0]))
        assert res.margin == pytest.approx(opt_m[-1])
    assert sum(m < 0 for m in opt_m) >= sum(m < 0 for m in rand_m)
    assert np.mean(opt_m) < np.mean(rand_m)
    assert sum(m < 0 for m in opt_m) >= 5, opt_m
    assert max(queries) <= cfg.max_queries


def test_optimised_image_is_exactly_a_scored_image(logo):
    """Quantisation inside the loop: the saved render of the best θ is an image the model saw."""
    model = _Region()
    cfg = OptimConfig(population=6, generations=1, hops=1, max_queries=100)
    free = Feasible(feasible_positions(np.zeros((R, R), bool), *logo[1].shape))
    x = _dark_corner(3)
    res = optimise(model, x, 1, logo, free, cfg, np.random.default_rng(0))
    saved = to_model_input(render_u8(x, *logo, [res.alpha], [res.u], [res.v]))[0]
    seen = torch.cat(model.seen)
    assert any(torch.equal(saved, s) for s in seen)
    assert res.queries == len(seen)


def test_first_flip_stops_early_and_kappa_searches_further(logo):
    free = Feasible(feasible_positions(np.zeros((R, R), bool), *logo[1].shape))
    x = _dark_corner(1)
    base = dict(population=8, generations=5, hops=2, max_queries=400, pixel_step=0.3)
    first = optimise(_Region(), x, 1, logo, free, OptimConfig(**base), np.random.default_rng(0))
    deep = optimise(
        _Region(), x, 1, logo, free, OptimConfig(**base, kappa=50.0), np.random.default_rng(0)
    )
    assert first.success and first.margin < 0
    assert first.queries < deep.queries <= 400  # kappa=50 is unreachable: runs to the cap
    assert not deep.success and deep.margin <= first.margin


def test_query_cap_is_respected(logo):
    free = Feasible(feasible_positions(np.zeros((R, R), bool), *logo[1].shape))
    cfg = OptimConfig(population=10, generations=10, hops=3, max_queries=35, kappa=1e6)
    res = optimise(_Region(), _image(0), 1, logo, free, cfg, np.random.default_rng(0))
    assert res.queries == 30


def test_optimiser_keeps_off_the_forbidden_region(logo):
    forb = forbidden_map(np.array([[18.0, 18.0, 32.0, 32.0]]), (R, R), 2.0)
    f = Feasible(feasible_positions(forb, *logo[1].shape))
    res = optimise(
        _Region(), _dark_corner(0), 1, logo, f, OptimConfig(population=8), np.random.default_rng(0)
    )
    assert footprint_overlap(forb, res.u, res.v, *logo[1].shape) == 0


# ---------------------------------------------------------------- certificate


def _records(n: int = 3):
    return [
        {k: 0 for k in cert_mod.RECORD_FIELDS}
        | {
            "image_id": f"p{i}/s1/v1",
            "locked_sha256": cert_mod.image_sha256(_image(i)),
            "alpha": 0.5,
        }
        for i in range(n)
    ]


def test_certificate_verifies_and_rejects_edits_and_other_keys():
    key = Ed25519PrivateKey.generate()
    cert = cert_mod.sign({"method": "medlocker"}, _records(), key)
    cert_mod.check_signature(cert, key.public_key())
    edited = cert | {"records": [dict(r) for r in cert["records"]]}
    edited["records"][1]["alpha"] = 0.51
    with pytest.raises(cert_mod.CertificateError, match="digest"):
        cert_mod.check_signature(edited, key.public_key())
    with pytest.raises(cert_mod.CertificateError, match="signature does not match"):
        cert_mod.check_signature(cert, Ed25519PrivateKey.generate().public_key())
    forged = cert | {"signature": "00" * 64}
    with pytest.raises(cert_mod.CertificateError, match="signature does not match"):
        cert_mod.check_signature(forged, key.public_key())


def test_certificate_copy_check_flags_one_changed_pixel():
    cert = cert_mod.sign({}, _records(), Ed25519PrivateKey.generate())
    copy = {f"p{i}/s1/v1": _image(i) for i in range(3)}
    assert cert_mod.check_copy(cert, copy)["ok"]
    copy["p1/s1/v1"] = copy["p1/s1/v1"].copy()
    copy["p1/s1/v1"][5, 7] ^= 1
    res = cert_mod.check_copy(cert, copy)
    assert not res["ok"] and res["changed"] == ["p1/s1/v1"]
    del copy["p2/s1/v1"]
    assert cert_mod.check_copy(cert, copy)["missing"] == ["p2/s1/v1"]


# ---------------------------------------------------------------- restore packages


@pytest.fixture
def locked_pair(logo):
    x = _image(7)
    y = render_u8(x, *logo, [0.7], [5], [9])[0].numpy()
    h, w = logo[1].shape
    return x, y, (5, 9, h, w)


def test_unlock_restores_the_original_bit_for_bit(locked_pair, tmp_path):
    x, y, box = locked_pair
    key = restore.new_key()
    restore.write_package(
        tmp_path, "p1/s1/v1", restore.make_package(key, "p1/s1/v1", x, y, {"alpha": 0.7}, box)
    )
    blob = restore.read_package(tmp_path, "p1/s1/v1")
    header, pixels = restore.open_package(key, "p1/s1/v1", blob)
    out = restore.unlock_image(y, header, pixels)
    assert out.dtype == np.uint8 and out.tobytes() == x.tobytes()
    assert not np.array_equal(y, x)
    path = tmp_path / "x.png"
    Image.fromarray(out).save(path)
    assert np.asarray(Image.open(path)).tobytes() == x.tobytes()


def test_unlock_refuses_wrong_key_tampered_truncated_and_foreign_packages(locked_pair):
    x, y, box = locked_pair
    key = restore.new_key()
    blob = restore.make_package(key, "a", x, y, {}, box)
    with pytest.raises(restore.PackageError, match="wrong key"):
        restore.open_package(restore.new_key(), "a", blob)
    flipped = bytearray(blob)
    flipped[40] ^= 0x01
    with pytest.raises(restore.PackageError, match="tampered"):
        restore.open_package(key, "a", bytes(flipped))
    with pytest.raises(restore.PackageError):
        restore.open_package(key, "a", blob[:-5])
    with pytest.raises(restore.PackageError, match="bad magic or truncated"):
        restore.open_package(key, "a", blob[:20])
    with pytest.raises(restore.PackageError, match="another image"):
        restore.open_package(key, "b", blob)
    header, pixels = restore.open_package(key, "a", blob)
    other = y.copy()
    other[0, 0] ^= 1
    with pytest.raises(restore.PackageError, match="not the locked image"):
        restore.unlock_image(other, header, pixels)
