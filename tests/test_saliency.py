"""Batched EigenCAM equals the grad-cam library's per-image output; HDF5 layout of the maps."""

import h5py
import numpy as np
import pytest
import torch
from pytorch_grad_cam import EigenCAM

from medmark.models import build_classifier
from medmark.saliency import EigenCamBatcher, resolve_cam_layer, write_saliency_h5


@pytest.fixture(scope="module")
def model():
    return build_classifier("resnet18", seed=0).eval()


def test_batched_maps_equal_library_per_image(model):
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    batched = EigenCamBatcher(model)(x)
    cam = EigenCAM(model=model, target_layers=[model.net.layer4[-1]])
    single = np.concatenate([cam(input_tensor=x[i : i + 1], targets=None) for i in range(6)])
    assert batched.shape == (6, 32, 32)
    assert batched.min() >= 0.0 and batched.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_auto_layer_keeps_a_spatial_map_at_small_resolutions(model):
    assert resolve_cam_layer(model, "auto", 224) is model.net.layer4[-1]  # 7x7 map
    assert resolve_cam_layer(model, "auto", 64) is model.net.layer2[-1]  # 8x8 (layer4 is 2x2)
    assert resolve_cam_layer(model, "auto", 128) is model.net.layer3[-1]  # 8x8
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    maps = EigenCamBatcher(model, resolution=64)(x)
    assert all(m.max() - m.min() > 0.5 for m in maps)  # not a constant map


def test_densenet_default_layer_and_dotted_layer():
    m = build_classifier("densenet121", seed=0).eval()
    assert resolve_cam_layer(m, "auto") is m.net.features[-1]
    assert resolve_cam_layer(m, "net.features.denseblock4") is m.net.features.denseblock4
    with pytest.raises(ValueError, match="not a module"):
        resolve_cam_layer(m, "net.nope")


def test_write_saliency_h5(tmp_path, model):
    src = tmp_path / "r32.h5"
    rng = np.random.default_rng(0)
    with h5py.File(src, "w") as f:
        f["images"] = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
        f.create_dataset("ids", data=[f"p{i}" for i in range(5)], dtype=h5py.string_dtype())
    out = tmp_path / "sal.h5"
    n = write_saliency_h5(
        src,
        model,
        out,
        target_layer="auto",
        batch_size=2,
        device=torch.device("cpu"),
        provenance={},
    )
    assert n == 5
    with h5py.File(out) as f:
        assert f["maps"].dtype == np.float16 and f["maps"].shape == (5, 32, 32)
        assert f["maps"].chunks == (1, 32, 32)
        assert list(f["ids"].asstr()[:]) == [f"p{i}" for i in range(5)]
        assert f.attrs["method"] == "eigencam"
        maps = f["maps"][:].astype(np.float32)
    ref = EigenCamBatcher(model, resolution=32)(
        torch.from_numpy(_read(src)).float().div(255).unsqueeze(1)
    )
    np.testing.assert_allclose(maps, ref, atol=1e-3)  # float16 storage


def _read(path):
    with h5py.File(path) as f:
        return f["images"][:]


@pytest.mark.parametrize(("arch", "res"), [("resnet18", 224), ("shufflenet_v2", 64)])
def test_thin_svd_projection_equals_the_library_full_svd(arch, res):
    """The first principal component from the thin SVD is the library's, sign included.

    Breakage guarded: a projection on another singular vector or with the sign flipped (e.g.
    ``vt[-1]`` or ``-vt[0]``) differs from ``get_2d_projection``."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from medmark.saliency import first_component_projection

    m = build_classifier(arch, seed=1).eval()
    batcher = EigenCamBatcher(m, resolution=res)
    x = torch.rand(4, 1, res, res, generator=torch.Generator().manual_seed(2))
    acts = batcher.activations(x).numpy()
    batcher.close()
    np.testing.assert_allclose(first_component_projection(acts), get_2d_projection(acts), atol=1e-5)
