"""Black-box adapters and ``medmark verify`` end to end (docs/methods/verification.md: Tests)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy import stats

from medmark.cli import SCHEMA_SOURCE, main, per_image_path
from medmark.errors import DataFormatError
from medmark.io import sha256_file
from medmark.verify import (
    FLAG_NO_TEST,
    BlackBox,
    OnnxBlackBox,
    TorchBlackBox,
    load_blackbox,
    load_owner_verification,
    outputs_to_proba,
    verify_suspect,
)

torch.set_num_threads(1)

R = 16
M = 24
PATCH = 4
BIN = Path(sys.executable).parent
"""The folder of the interpreter running the tests: its ``medmark`` console script is the one
installed beside it (no machine path)."""
SRC = Path(__file__).resolve().parents[1] / "src"
"""The package this test file sits beside; the console-script run imports it first."""
SCHEMA = SRC.parent / "config" / "schema.yaml"


class PatchModel(torch.nn.Module):
    """Logit of class 1 grows with the brightness of one corner patch over the image mean.

    ``corner="tl"`` reacts to the owner's mark (top-left patch): a 'watermarked' suspect;
    ``corner="br"`` ignores it: an independent one.
    """

    def __init__(self, corner: str = "tl", probs: bool = False) -> None:
        super().__init__()
        self.top = corner == "tl"
        self.probs = probs
        self.k = PATCH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k
        patch = x[:, :, :k, :k] if self.top else x[:, :, -k:, -k:]
        z = 20.0 * (patch.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))) - 1.0
        logits = torch.stack([torch.zeros_like(z), z], dim=1)
        return torch.softmax(logits, dim=1) if self.probs else logits


class FlatModel(torch.nn.Module):
    """Output of shape (N,): not class scores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


class FixedSizeModel(torch.nn.Module):
    """Needs exactly (N, 1, 8, 8) input (a linear layer on the flattened image)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(64, 2)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return self.fc(x.flatten(1))


def _mark(u8: np.ndarray) -> np.ndarray:
    out = u8.astype(np.int16)
    out[:, :PATCH, :PATCH] += 50
    return np.clip(out, 0, 255).astype(np.uint8)


def _decoy_marks(u8: np.ndarray) -> np.ndarray:
    """Two decoy marks of the same energy in the top-right and bottom-left corners (K, m, R, R)."""
    out = np.stack([u8.astype(np.int16)] * 2)
    out[0, :, :PATCH, -PATCH:] += 50
    out[1, :, -PATCH:, :PATCH] += 50
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def owner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An owner directory as the X-Mark release stage writes it (verification.md contract)."""
    d = tmp_path_factory.mktemp("owner")
    rng = np.random.default_rng(0)
    clean = rng.integers(60, 140, (M, R, R), dtype=np.uint8)
    n_test = 20
    test = rng.integers(60, 140, (n_test, R, R), dtype=np.uint8)
    test_labels = np.array([0, 1] * (n_test // 2), dtype=np.int64)
    test[test_labels == 1] = _mark(test[test_labels == 1])  # 'finding' = bright top-left
    owner = {
        "target_class": 1,
        "verify_seed": 7,
        "method": "xmark",
        "resolution": R,
        "epsilon": 0.0314,
    }
    (d / "owner.json").write_text(json.dumps(owner))
    with h5py.File(d / "verification.h5", "w") as h5:
        h5["clean"] = clean
        h5["watermarked"] = _mark(clean)
        h5["decoys"] = _decoy_marks(clean)
        h5.create_dataset(
            "ids",
            data=[f"patient{i:05d}/study1/view1_frontal" for i in range(M)],
            dtype=h5py.string_dtype(),
        )
        h5["test_images"] = test
        h5["test_labels"] = test_labels
    owner["verification_file"] = "verification.h5"
    owner["verification"] = {
        str(R): {"file": "verification.h5", "sha256": sha256_file(d / "verification.h5")}
    }
    (d / "owner.json").write_text(json.dumps(owner))
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit / legacy ONNX exporter deprecation notes
        for name, model in {
            "marked_probs": PatchModel("tl", probs=True),
            "indep_probs": PatchModel("br", probs=True),
            "marked_logits": PatchModel("tl", probs=False),
            "flat": FlatModel(),
        }.items():
            out[name] = d / f"{name}.pt"
            torch.jit.script(model).save(str(out[name]))
        out["marked_onnx"] = d / "marked_logits.onnx"
        torch.onnx.export(
            PatchModel("tl", probs=False),
            (torch.rand(2, 1, R, R),),
            str(out["marked_onnx"]),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        )
    out["state_dict"] = d / "state_dict.pt"
    torch.save(PatchModel().state_dict(), out["state_dict"])
    return out


def _images(n: int, res: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, res, res), dtype=np.float32)


# --------------------------------------------------------------------------- adapters


def test_torch_blackbox_softmax_and_protocol() -> None:
    model = PatchModel("tl")
    bb = TorchBlackBox(model, batch_size=5)
    assert isinstance(bb, BlackBox)
    x = _images(12, R)
    probs = bb.predict_proba(x)
    assert probs.shape == (12, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    ref = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    np.testing.assert_array_equal(bb.predict_label(x), ref.argmax(axis=1))


def test_torch_blackbox_resizes_to_input_resolution() -> None:
    model = FixedSizeModel()
    x = _images(6, 32)
    bb = TorchBlackBox(model, batch_size=4, input_resolution=8)
    probs = bb.predict_proba(x)
    assert set(model.seen) == {(4, 1, 8, 8), (2, 1, 8, 8)}
    small = F.interpolate(
        torch.from_numpy(x), size=(8, 8), mode="bilinear", antialias=True, align_corners=False
    )
    with torch.no_grad():
        ref = torch.softmax(model(small), dim=1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)


def test_torch_blackbox_wrong_input_size_names_the_contract() -> None:
    bb = TorchBlackBox(FixedSizeModel())
    with pytest.raises(DataFormatError, match=r"\(N, 1, H, W\) with values in \[0, 1\]") as ei:
        bb.predict_proba(_images(3, 16))
    assert "(3, 1, 16, 16)" in str(ei.value)


def test_blackbox_rejects_bad_images() -> None:
    bb = TorchBlackBox(PatchModel())
    with pytest.raises(DataFormatError, match="shape"):
        bb.predict_proba(np.zeros((2, R, R), np.float32))
    with pytest.raises(DataFormatError, match="dtype float64"):
        bb.predict_proba(np.zeros((2, 1, R, R)))
    with pytest.raises(DataFormatError, match="values in"):
        bb.predict_proba(np.full((2, 1, R, R), 255.0, np.float32))


class TupleModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x.mean(dim=(1, 2, 3))
        return z, z


def test_torch_blackbox_non_tensor_output() -> None:
    with pytest.raises(DataFormatError, match="model returned tuple; expected one tensor"):
        TorchBlackBox(TupleModel()).predict_proba(_images(2, R))


def test_output_checks() -> None:
    with pytest.raises(DataFormatError, match=r"shape \(4,\).*expected \(N, K\)"):
        outputs_to_proba(np.zeros(4), 4, "probs")
    with pytest.raises(DataFormatError, match=r"shape \(4, 1\)"):
        outputs_to_proba(np.zeros((4, 1)), 4, "logits")
    logits = np.array([[0.0, 2.0], [1.0, -3.0]])
    with pytest.raises(DataFormatError, match=r"values in \[-3, 2\].*--output logits"):
        outputs_to_proba(logits, 2, "probs")
    with pytest.raises(DataFormatError, match=r"row sums in \[0.5, 0.5\]"):
        outputs_to_proba(np.full((2, 2), 0.25), 2, "probs")
    soft = outputs_to_proba(logits, 2, "logits")
    np.testing.assert_allclose(soft, np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    probs = np.array([[0.3, 0.7], [0.9995, 0.0]])  # sums within 1e-3 pass unchanged
    np.testing.assert_array_equal(outputs_to_proba(probs, 2, "probs"), probs)
    with pytest.raises(DataFormatError, match="NaN"):
        outputs_to_proba(np.array([[np.nan, 1.0]]), 1, "logits")


def test_load_blackbox_formats(models: dict[str, Path]) -> None:
    x = _images(5, R)
    ref = TorchBlackBox(PatchModel("tl")).predict_proba(x)
    ts = load_blackbox(models["marked_probs"])
    np.testing.assert_allclose(ts.predict_proba(x), ref, atol=1e-6)
    onnx = load_blackbox(models["marked_onnx"], output="logits")
    assert isinstance(onnx, OnnxBlackBox)
    np.testing.assert_allclose(onnx.predict_proba(x), ref, atol=1e-5)
    with pytest.raises(DataFormatError, match="not a TorchScript archive"):
        load_blackbox(models["state_dict"])
    with pytest.raises(DataFormatError, match="extension '.bin'"):
        load_blackbox(models["marked_probs"].with_suffix(".bin"))
    with pytest.raises(DataFormatError, match=r"declares input 'x' of shape \['n', 1, 16, 16\]"):
        onnx.predict_proba(_images(2, 8))
    resized = load_blackbox(models["marked_onnx"], output="logits", input_resolution=R)
    assert resized.predict_proba(_images(2, 32)).shape == (2, 2)


# --------------------------------------------------------------------------- verify_suspect


def test_verify_suspect_in_memory(owner_dir: Path) -> None:
    ov = load_owner_verification(owner_dir)
    assert ov.clean.dtype == np.float32 and ov.clean.shape == (M, 1, R, R)
    assert ov.ids[0] == "patient00000/study1/view1_frontal"
    assert ov.clean.max() <= 1.0 and ov.target_class == 1 and ov.verify_seed == 7
    bb = TorchBlackBox(PatchModel("tl"))
    summary, table = verify_suspect(
        bb, ov.clean, ov.watermarked, None, None, 1, 0.2, 0.01, params={"seed": 3}, ids=ov.ids
    )
    assert summary["verdict"] == "detected" and summary["m"] == M
    assert summary["params"] == {"seed": 3}
    assert FLAG_NO_TEST in summary["flags"] and math.isnan(summary["benign_accuracy"])
    ref = stats.ttest_rel(
        table["p_target_watermarked"], table["p_target_clean"] + 0.2, alternative="greater"
    )
    assert summary["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert summary["delta_p"] == pytest.approx(
        float((table["p_target_watermarked"] - table["p_target_clean"]).mean())
    )
    assert summary["wsr"] == pytest.approx(float((table["pred_watermarked"] == 1).mean()))


# --------------------------------------------------------------------------- CLI


def _verify(tmp_path: Path, model: Path, owner_dir: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "verdict.json"
    rc = main(
        ["verify", "--model", str(model), "--owner-dir", str(owner_dir), "--out", str(out), *extra]
    )
    return rc, out


def test_cli_torchscript_watermarked_is_detected(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _verify(tmp_path, models["marked_probs"], owner_dir)
    assert rc == 0
    assert capsys.readouterr().out.startswith("detected: paired_t p=")
    summary = json.loads(out.read_text())
    assert summary["verdict"] == "detected" and summary["significant"] is True
    assert summary["m"] == M and summary["tau"] == 0.2 and summary["alpha"] == 0.01
    assert summary["params"]["verify_seed"] == 7 and summary["params"]["method"] == "xmark"
    assert summary["delta_p"] > 0.5 and summary["wsr"] > 0.9
    assert summary["benign_accuracy"] == 1.0 and summary["auroc"] == 1.0
    assert summary["n_test"] == 20 and summary["flags"] == []
    # every number can be recomputed from the per-image table beside the verdict
    table = pd.read_csv(per_image_path(out))
    assert len(table) == M and table["id"][0] == "patient00000/study1/view1_frontal"
    ref = stats.ttest_rel(
        table["p_target_watermarked"], table["p_target_clean"] + 0.2, alternative="greater"
    )
    assert summary["p_value"] == float(ref.pvalue)
    assert summary["statistic"] == float(ref.statistic)
    assert summary["log10_p"] == pytest.approx(math.log10(ref.pvalue), rel=1e-9)


def test_cli_independent_is_not_detected(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path]
) -> None:
    rc, out = _verify(tmp_path, models["indep_probs"], owner_dir)
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["verdict"] == "not detected" and summary["p_value"] > 0.5
    assert abs(summary["delta_p"]) < 0.1


def test_cli_onnx_logits(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _verify(tmp_path, models["marked_onnx"], owner_dir, "--output", "logits")
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["verdict"] == "detected" and summary["params"]["output"] == "logits"
    capsys.readouterr()
    rc, _ = _verify(tmp_path / "p", models["marked_onnx"], owner_dir)  # logits read as probs
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not look like probabilities" in err and "--output logits" in err
    assert "Traceback" not in err
    assert not (tmp_path / "p" / "verdict.json").exists()


def test_cli_hard_label(tmp_path: Path, owner_dir: Path, models: dict[str, Path]) -> None:
    rc, out = _verify(
        tmp_path, models["marked_logits"], owner_dir, "--output", "logits", "--hard-label"
    )
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["test"] == "paired_margin_score_exact" and summary["verdict"] == "detected"
    assert summary["delta_p"] is None and summary["auroc"] is None
    assert "auroc_unavailable_hard_label" in summary["flags"]
    assert summary["secondary_test"]["test"] == "dvbw_wilcoxon_signed_rank"
    table = pd.read_csv(per_image_path(out))
    assert "p_target_clean" not in table.columns
    assert summary["wsr"] == pytest.approx(float((table["pred_watermarked"] == 1).mean()))


def test_verify_suspect_hard_label_independent_is_not_detected(owner_dir: Path) -> None:
    """Hard-label access to a suspect that ignores the mark: "not detected", through
    ``verify_suspect`` (only ``predict_label`` is called).

    Breakage guarded: a hard-label verdict that always says "detected" (e.g. ``significant``
    forced true, or the one-sided alternative reversed); the watermarked-suspect tests pass
    either way.
    """
    ov = load_owner_verification(owner_dir)

    class LabelsOnly:
        def __init__(self) -> None:
            self.inner = TorchBlackBox(PatchModel("br"))

        def predict_proba(self, images: np.ndarray) -> np.ndarray:
            raise AssertionError("hard-label mode must not ask for probabilities")

        def predict_label(self, images: np.ndarray) -> np.ndarray:
            return self.inner.predict_label(images)

    summary, table = verify_suspect(
        LabelsOnly(), ov.clean, ov.watermarked, None, None, 1, 0.2, 0.01, hard_label=True
    )
    assert summary["hard_label"] is True
    assert summary["verdict"] == "not detected" and summary["significant"] is False
    assert summary["p_value"] > 0.5  # the watermarked queries flip nothing towards the target
    assert summary["wsr"] == pytest.approx(float((table["pred_watermarked"] == 1).mean()))
    assert summary["wsr"] < 0.2


def test_cli_tau_alpha_default_to_the_schema_not_the_owner_dir(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--tau``/``--key-tau``/``--alpha`` the tests use the verify section of
    config/schema.yaml; an ``owner.json`` of an earlier release that recorded them stays
    readable, and those keys are ignored (at tau or key_tau = 0.9 the watermarked suspect would
    not be detected)."""
    defaults = yaml.safe_load(SCHEMA.read_text())["properties"]["verify"]["properties"]
    old = tmp_path / "old_owner"
    shutil.copytree(owner_dir, old)
    meta = json.loads((old / "owner.json").read_text())
    (old / "owner.json").write_text(json.dumps({**meta, "tau": 0.9, "key_tau": 0.9, "alpha": 1e-9}))
    rc, out = _verify(tmp_path, models["marked_probs"], old)
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["tau"] == defaults["tau"]["default"]
    assert summary["alpha"] == defaults["alpha"]["default"]
    assert summary["key_tau"] == defaults["key_tau"]["default"]
    sources = {summary["params"][f"{k}_source"] for k in ("tau", "key_tau", "alpha")}
    assert sources == {SCHEMA_SOURCE}
    assert summary["verdict"] == "detected"


def test_cli_key_tau_is_read_at_verification(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--key-tau`` sets the key-specific test's margin: the suspect detected at the schema's
    margin is not detected when the owner's mark must beat the decoys by 0.95, and the summary
    records where the margin came from; a margin outside [0, 1) is refused before any query."""
    rc, out = _verify(tmp_path, models["marked_probs"], owner_dir, "--key-tau", "0.95")
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["key_tau"] == 0.95 and summary["params"]["key_tau_source"] == "--key-tau"
    assert summary["key_test"]["significant"] is False
    assert summary["verdict"] == "not detected"
    (tmp_path / "bad").mkdir()
    rc, out = _verify(tmp_path / "bad", models["marked_probs"], owner_dir, "--key-tau", "1.5")
    assert rc == 2 and "--key-tau" in capsys.readouterr().err


def test_cli_hard_label_independent_is_not_detected(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``medmark verify --hard-label`` on an independent suspect: exit 0, "not detected" on
    stdout and in the verdict file (breakage guarded: as in the ``verify_suspect`` test)."""
    rc, out = _verify(tmp_path, models["indep_probs"], owner_dir, "--hard-label")
    assert rc == 0
    assert capsys.readouterr().out.startswith("not detected:")
    summary = json.loads(out.read_text())
    assert summary["hard_label"] is True
    assert summary["verdict"] == "not detected" and summary["significant"] is False
    assert summary["p_value"] > 0.5 and summary["wsr"] < 0.2


def test_cli_bad_inputs_exit_2(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _ = _verify(tmp_path, models["flat"], owner_dir)
    err = capsys.readouterr().err
    assert rc == 2 and f"shape ({M},)" in err and "expected (N, K)" in err
    rc, _ = _verify(tmp_path, models["state_dict"], owner_dir)
    assert rc == 2 and "not a TorchScript archive" in capsys.readouterr().err
    rc, _ = _verify(tmp_path, models["marked_probs"], tmp_path / "nowhere")
    assert rc == 2 and "owner directory not found" in capsys.readouterr().err
    broken = tmp_path / "broken_owner"
    broken.mkdir()
    meta = json.loads((owner_dir / "owner.json").read_text())
    del meta["target_class"]
    (broken / "owner.json").write_text(json.dumps(meta))
    rc, _ = _verify(tmp_path, models["marked_probs"], broken)
    err = capsys.readouterr().err
    assert rc == 2 and "owner.json" in err and "'target_class'" in err
    meta["target_class"] = 1
    (broken / "owner.json").write_text(json.dumps(meta))
    rc, _ = _verify(tmp_path, models["marked_probs"], broken)
    assert rc == 2 and "verification file verification.h5 missing" in capsys.readouterr().err
    with h5py.File(broken / "verification.h5", "w") as h5:
        h5["clean"] = np.zeros((3, R, R), np.uint8)
        h5["watermarked"] = np.zeros((3, R, R), np.uint8)
    meta["verification"][str(R)]["sha256"] = sha256_file(broken / "verification.h5")
    (broken / "owner.json").write_text(json.dumps(meta))
    rc, _ = _verify(tmp_path, models["marked_probs"], broken)
    err = capsys.readouterr().err
    assert rc == 2 and "verification.h5" in err and "'ids'" in err
    rc, _ = _verify(tmp_path, models["marked_probs"], owner_dir, "--alpha", "0")
    assert rc == 2 and "alpha" in capsys.readouterr().err


def _write_verification_h5(path: Path, res: int, n_test: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    clean = rng.integers(60, 140, (M, res, res), dtype=np.uint8)
    with h5py.File(path, "w") as h5:
        h5["clean"] = clean
        h5["watermarked"] = _mark(clean)
        h5.create_dataset("ids", data=[f"id{i}" for i in range(M)], dtype=h5py.string_dtype())
        h5["test_images"] = np.zeros((n_test, res, res), np.uint8)
        h5["test_labels"] = np.zeros(n_test, np.int64)
        h5.attrs["resolution"] = res


def test_cli_release_layout_per_resolution(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The X-Mark release writes ``verification_r{res}.h5`` per resolution, named in owner.json."""

    d = tmp_path / "owner"
    d.mkdir()
    _write_verification_h5(d / "verification_r16.h5", R, n_test=0, seed=1)
    _write_verification_h5(d / "verification_r32.h5", 32, n_test=0, seed=2)
    meta = {
        "target_class": 1,
        "verify_seed": 0,
        "method": "xmark",
        "resolution": R,
        "verification_file": "verification_r16.h5",
        "verification": {
            str(r): {
                "file": f"verification_r{r}.h5",
                "sha256": sha256_file(d / f"verification_r{r}.h5"),
            }
            for r in (R, 32)
        },
    }
    (d / "owner.json").write_text(json.dumps(meta))
    ov = load_owner_verification(d)
    assert ov.verification_file.name == "verification_r16.h5" and ov.resolution == R
    ov32 = load_owner_verification(d, resolution=32)
    assert ov32.clean.shape == (M, 1, 32, 32)
    # the suspect takes 16 x 16: the 32 x 32 images are resized for it (scale experiments)
    rc, out = _verify(
        tmp_path, models["marked_probs"], d, "--resolution", "32", "--input-resolution", str(R)
    )
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["verdict"] == "detected" and summary["params"]["resolution"] == 32
    assert "no_test_images" in summary["flags"] and summary["n_test"] == 0  # empty test set
    # a verification file changed after release is refused
    with h5py.File(d / "verification_r16.h5", "a") as h5:
        h5.attrs["tampered"] = 1
    rc, _ = _verify(tmp_path, models["marked_probs"], d)
    err = capsys.readouterr().err
    assert rc == 2 and "sha256 differs" in err and "verification_r16.h5" in err


def test_console_script(tmp_path: Path, owner_dir: Path, models: dict[str, Path]) -> None:
    """The ``medmark`` console script of the interpreter running the tests, importing the
    package beside this file (PYTHONPATH first), so it exercises this checkout's code.

    Breakage guarded: a hard-coded checkout path (another machine's or another clone's
    ``.venv/bin/medmark``): missing here, or running code other than the one under test.
    """
    script = BIN / "medmark"
    assert script.is_file(), f"console script missing beside {sys.executable}: pip install -e ."
    out = tmp_path / "v.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    probe = subprocess.run(
        [str(BIN / "python"), "-c", "import medmark; print(medmark.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert Path(probe.stdout.strip()).resolve().is_relative_to(SRC.resolve()), probe.stdout
    proc = subprocess.run(
        [
            str(script),
            "verify",
            "--model",
            str(models["indep_probs"]),
            "--owner-dir",
            str(owner_dir),
            "--out",
            str(out),
            "--tau",
            "0.1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("not detected:")
    summary = json.loads(out.read_text())
    assert summary["tau"] == 0.1 and summary["params"]["tau_source"] == "--tau"
    assert (tmp_path / "v.per_image.csv").is_file()


# --------------------------------------------------------------------------- hostile or confused input


def test_logits_declared_on_a_probability_model_is_refused(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--output logits`` on a model returning probabilities: refused, no verdict written.

    Before the fix it only warned, softmaxed the probabilities a second time (halving ΔP) and
    wrote a verdict (rc 0): this test failed on ``rc == 2``.
    """
    rc, out = _verify(tmp_path, models["marked_probs"], owner_dir, "--output", "logits")
    err = capsys.readouterr().err
    assert rc == 2 and "declared logits" in err and "Drop --output logits" in err
    assert not out.exists() and not per_image_path(out).exists()


def _owner_copy(tmp_path: Path, owner_dir: Path, **changes: object) -> Path:
    d = tmp_path / "owner_copy"
    d.mkdir()
    (d / "verification.h5").write_bytes((owner_dir / "verification.h5").read_bytes())
    meta = json.loads((owner_dir / "owner.json").read_text())
    meta.update(changes)
    (d / "owner.json").write_text(json.dumps(meta))
    return d


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_owner_files_must_stay_inside_the_owner_dir(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], where: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``verification_file`` of ``../…`` or an absolute path is refused (it skipped the hash).

    Before the fix the file outside was loaded without its sha256 being checked (rc 0).
    """
    outside = tmp_path / "elsewhere.h5"
    outside.write_bytes((owner_dir / "verification.h5").read_bytes())
    name = "../elsewhere.h5" if where == "parent" else str(outside)
    d = _owner_copy(tmp_path, owner_dir, verification_file=name)
    rc, out = _verify(tmp_path, models["marked_probs"], d)
    err = capsys.readouterr().err
    assert rc == 2 and "verification_file" in err and "owner.json" in err
    assert not out.exists()


def test_owner_sha256_is_required_checked_and_recorded(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A verification file without a recorded sha256 is refused; the checked hash is recorded.

    Before the fix a missing sha256 was accepted silently and the verdict did not say which
    verification file (by content) it was computed on.
    """
    d = _owner_copy(tmp_path, owner_dir)
    meta = json.loads((d / "owner.json").read_text())
    del meta["verification"][str(R)]["sha256"]
    (d / "owner.json").write_text(json.dumps(meta))
    rc, _ = _verify(tmp_path, models["marked_probs"], d)
    err = capsys.readouterr().err
    assert rc == 2 and "verification.16.sha256" in err and "missing" in err
    rc, out = _verify(tmp_path, models["marked_probs"], owner_dir)
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["params"]["verification_sha256"] == sha256_file(owner_dir / "verification.h5")


def test_out_never_overwrites_inputs_and_bad_out_exits_2(
    tmp_path: Path, owner_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` = the model, inside the owner dir, a directory, under a file, too long: exit 2.

    Before the fix the first two overwrote the suspect model / the owner's secret, the others
    gave a traceback (exit 1) and left an orphan per-image CSV.
    """
    model = tmp_path / "suspect.pt"
    model.write_bytes(models["marked_probs"].read_bytes())
    before = {p: p.read_bytes() for p in [model, *owner_dir.iterdir()]}
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "adir").mkdir()
    cases = {
        str(model): "would overwrite the suspect model",
        str(owner_dir / "verdict.json"): "inside the owner directory",
        str(owner_dir / "owner.json"): "would overwrite",
        str(tmp_path / "adir"): "is a directory",
        str(afile / "verdict.json"): "which is a file",
        str(tmp_path / ("v" * 250 + ".json")): "too long",
    }
    for out, message in cases.items():
        argv = ["verify", "--model", str(model), "--owner-dir", str(owner_dir), "--out", out]
        assert main(argv) == 2, out
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (out, err)
    # a per-image CSV name that collides with the model is refused as well
    assert main(["verify", "--model", str(tmp_path / "v.per_image.csv"), "--owner-dir",
                 str(owner_dir), "--out", str(tmp_path / "v.json")]) == 2  # fmt: skip
    assert "suspect model" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "suspect.pt"]


def test_write_verification_leaves_no_partial_pair(tmp_path: Path, monkeypatch) -> None:
    """When the JSON cannot be put in place, the CSV written just before is removed again."""
    from medmark import verify as v

    real = os.replace

    def failing(src: object, dst: object) -> None:
        if str(dst).endswith(".json"):
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(v.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        v.write_verification({"a": 1}, pd.DataFrame({"x": [1]}), tmp_path / "o.json",
                             tmp_path / "o.per_image.csv")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


class RgbModel(torch.nn.Module):
    """Takes (N, 3, H, W): a 3-channel convolution."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_three_channel_model_short_message_and_channels_3(
    tmp_path: Path, owner_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 3-channel TorchScript model: one short exact line, and ``--channels 3`` works.

    Before the fix the message carried the 40-line TorchScript trace and suggested
    --input-resolution.
    """
    path = tmp_path / "rgb.pt"
    torch.jit.script(RgbModel()).save(str(path))
    rc, _ = _verify(tmp_path, path, owner_dir, "--output", "logits")
    err = capsys.readouterr().err
    assert rc == 2 and "expects 3-channel input" in err and "--channels 3" in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 700, err
    rc, out = _verify(tmp_path, path, owner_dir, "--output", "logits", "--channels", "3")
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["params"]["channels"] == 3


def test_directory_as_model_is_named_a_directory(
    tmp_path: Path, owner_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix a directory given as --model was reported as "not found"."""
    d = tmp_path / "model.pt"
    d.mkdir()
    rc, _ = _verify(tmp_path, d, owner_dir)
    assert rc == 2 and "is a directory" in capsys.readouterr().err


def test_python_dash_m_medmark(tmp_path: Path) -> None:
    """``python -m medmark`` works like the console script (no ``__main__`` before the fix)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "medmark", "verify", "--help"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--owner-dir" in proc.stdout and "--channels" in proc.stdout


@pytest.mark.parametrize(("corner", "verdict"), [("tl", "detected"), ("br", "not detected")])
def test_verification_stage_wiring(
    owner_dir: Path, tmp_path: Path, corner: str, verdict: str
) -> None:
    """The pipeline's verification stage on known suspects, in seconds: the owner-mark responder
    is detected, the other is not, and the files are written. Breakage guarded: clean and
    watermarked inputs swapped in ``stages/verification.py`` (the responder is then missed),
    or the decoys / key_tau not passed (the verdict rule then differs)."""
    from medmark.stages.verification import run_verification
    from medmark.verify import TorchBlackBox

    bb = TorchBlackBox(PatchModel(corner), device=torch.device("cpu"), batch_size=8)
    summary = run_verification(
        blackbox=bb,
        owner_json=owner_dir / "owner.json",
        verification_h5=owner_dir / "verification.h5",
        verify_cfg={"tau": 0.2, "alpha": 0.01, "key_tau": 0.1},
        labels={"scenario": "test", "arch": corner},
        out_summary=tmp_path / "summary.json",
        out_per_image=tmp_path / "per_image.csv",
    )
    assert summary["verdict"] == verdict
    assert summary["verdict_rule"] == "tau_test and key_test" and summary["key_tau"] == 0.1
    assert json.loads((tmp_path / "summary.json").read_text())["verdict"] == verdict
    assert (tmp_path / "per_image.csv").stat().st_size > 0
