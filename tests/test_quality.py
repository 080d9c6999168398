"""Release image quality (docs/methods/verification.md, "Metrics": PSNR, SSIM, L-inf, L2, HF share)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmark.quality import high_frequency_energy, quality_table, release_quality


def _clean(n: int = 3, r: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 200, size=(n, r, r), dtype=np.uint8)


def test_identical_images() -> None:
    x = _clean()
    q = release_quality(x, x.copy())
    assert np.all(np.isinf(q["per_image"]["psnr"]))
    assert np.allclose(q["per_image"]["ssim"], 1.0)
    assert np.all(np.isnan(q["per_image"]["hf_share"]))
    s = q["summary"]
    assert s["n_unchanged"] == 3 and math.isnan(s["psnr_mean"]) and s["linf_max"] == 0.0


def test_constant_offset_exact_values() -> None:
    x = _clean()
    q = release_quality(x, x + 2)
    per = q["per_image"]
    assert np.all(per["linf_levels"] == 2) and np.allclose(per["linf"], 2 / 255)
    assert np.allclose(per["l2_levels"], 2 * 32) and np.allclose(per["l2"], 2 * 32 / 255)
    assert np.allclose(per["psnr"], 10 * np.log10(255**2 / 4))
    assert np.all(per["ssim"] < 1.0)
    assert np.allclose(per["hf_share"], 0.0, atol=1e-12)  # a constant is pure DC
    assert q["summary"]["n_unchanged"] == 0


def test_checkerboard_is_all_high_frequency() -> None:
    x = _clean(2)
    idx = np.arange(32)
    checker = ((idx[:, None] + idx[None, :]) % 2).astype(np.int16) * 2 - 1  # +-1 grey level
    q = release_quality(x, (x + checker).astype(np.uint8))
    # (-1)^(u+v) is the DCT-II's highest frequency up to a sub-percent leak into neighbours
    assert np.all(q["per_image"]["hf_share"] > 0.999)
    assert q["summary"]["hf_share_pooled"] > 0.999
    assert np.all(q["per_image"]["linf_levels"] == 1)


def test_dct_ignores_the_border_the_fft_wraps_around() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64), (64, 1))[None]  # smooth, but not periodic
    hf_dct, tot_dct = high_frequency_energy(ramp, "dct")
    hf_fft, tot_fft = high_frequency_energy(ramp, "fft")
    assert tot_dct[0] == pytest.approx(tot_fft[0] / ramp.size)  # both are energy-preserving
    share_dct, share_fft = hf_dct[0] / tot_dct[0], hf_fft[0] / tot_fft[0]
    assert share_dct < 1e-3 < share_fft
    with pytest.raises(ValueError):
        high_frequency_energy(ramp, "wavelet")


def test_inputs_are_checked() -> None:
    x = _clean()
    with pytest.raises(ValueError, match="uint8"):
        release_quality(x.astype(np.float32), x)
    with pytest.raises(ValueError, match="shape"):
        release_quality(x, x[:, :16])


def test_quality_table() -> None:
    x = _clean()
    main = release_quality(x, x + 1)["summary"]
    nolap = release_quality(x, x + 3)["summary"]
    df = quality_table([{"variant": "main", **main}, {"variant": "no_laplacian", **nolap}])
    assert list(df.columns)[0] == "variant" and df["variant"].tolist() == ["main", "no_laplacian"]
    assert df.loc[1, "linf_max_levels"] == 3
    assert "psnr_mean" in df.to_csv(index=False)
    with pytest.raises(ValueError, match="variant"):
        quality_table([main])
    with pytest.raises(ValueError, match="duplicate"):
        quality_table([{"variant": "a"}, {"variant": "a"}])
    with pytest.raises(ValueError):
        quality_table([])


def test_release_quality_in_blocks_equals_one_call() -> None:
    """The release computes quality block by block (memory flat in the number of marked
    images); per-image metrics and the summary must not depend on the blocking beyond rounding
    (the DCT of a batch may round in the last bit)."""
    from medmark.quality import release_quality, release_quality_blocks

    rng = np.random.default_rng(4)
    clean = rng.integers(0, 256, (7, 16, 16), dtype=np.uint8)
    wm = np.clip(clean.astype(int) + rng.integers(-3, 4, clean.shape), 0, 255).astype(np.uint8)
    wm[2] = clean[2]  # one unchanged pair
    whole = release_quality(clean, wm)
    blocks = release_quality_blocks((clean[i : i + 3], wm[i : i + 3]) for i in range(0, 7, 3))
    assert blocks["summary"] == pytest.approx(whole["summary"], rel=1e-12, nan_ok=True)
    for k, v in whole["per_image"].items():
        np.testing.assert_allclose(blocks["per_image"][k], v, rtol=1e-12)


def test_ssim_in_chunks_equals_one_call(monkeypatch):
    """SSIM is computed a few images at a time (memory); the values equal one batched call."""
    import medmark.quality as q

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (9, 48, 48), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    chunked = q._per_image(a, b)[0]["ssim"]
    monkeypatch.setattr(q, "SSIM_CHUNK", 1000)
    whole = q._per_image(a, b)[0]["ssim"]
    assert len(chunked) == 9
    np.testing.assert_array_equal(chunked, whole)
