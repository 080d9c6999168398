"""The surrogate trains from its own seed stream, never as the clean suspect of the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmark.data.h5 import H5ImageWriter
from medmark.data.labels import OBSERVATIONS
from medmark.models import load_classifier
from medmark.runtime import STREAM_SEED_FLOOR, stream_seed
from medmark.stages.classifiers import train_and_save

R, N = 32, 16
TASK = {"target_observation": "Pleural Effusion", "uncertainty": "u_zeros", "target_class": 1}
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "augment": False}


def test_stream_seed_is_deterministic_above_the_floor_and_role_specific():
    a = stream_seed(0, "surrogate")
    assert a == stream_seed(0, "surrogate")
    assert STREAM_SEED_FLOOR <= a < 2**32
    assert a != stream_seed(1, "surrogate")
    assert a != stream_seed(0, "reference")
    # one stream seed per config seed: no two small seeds share a stream seed
    assert len({stream_seed(s, "surrogate") for s in range(200)}) == 200


@pytest.fixture(scope="module")
def prep_h5(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    with H5ImageWriter(d / "prep.h5", 2 * N, R) as w:
        for i in range(2 * N):
            labels = np.full(len(OBSERVATIONS), np.nan, np.float32)
            labels[OBSERVATIONS.index("Pleural Effusion")] = float(i % 2)
            iid = f"patient{i:05d}/study1/view1_frontal"
            split = "release" if i < N else "test"
            w.append(rng.integers(0, 255, (R, R), dtype=np.uint8), iid, iid[:12], split, labels)
        w.close()
    return d / "prep.h5"


def _train(prep_h5, out, seed_stream):
    return train_and_save(
        train_h5=prep_h5,
        train_split="release",
        test_h5=prep_h5,
        arch="resnet18",
        task=TASK,
        train_cfg=TRAIN,
        seed=0,
        input_resolution=R,
        device="cpu",
        threads=1,
        out_model=out / "model.pt",
        out_last=out / "last.pt",
        out_history=out / "history.csv",
        out_metrics=out / "metrics.json",
        meta={},
        seed_stream=seed_stream,
    )


def _weights(path):
    return torch.cat([p.detach().flatten() for p in load_classifier(path).state_dict().values()])


def test_surrogate_is_not_the_suspect_of_its_seed(prep_h5, tmp_path):
    suspect = _train(prep_h5, tmp_path / "suspect", None)
    twin = _train(prep_h5, tmp_path / "twin", None)
    surrogate = _train(prep_h5, tmp_path / "surrogate", "surrogate")
    # control: same role, same seed, same data -> the same network
    assert torch.equal(
        _weights(tmp_path / "suspect/model.pt"), _weights(tmp_path / "twin/model.pt")
    )
    assert not torch.equal(
        _weights(tmp_path / "suspect/model.pt"), _weights(tmp_path / "surrogate/model.pt")
    )
    assert suspect["seed"] == surrogate["seed"] == 0
    assert twin["torch_seed"] == 0
    assert surrogate["seed_stream"] == "surrogate"
    assert surrogate["torch_seed"] == stream_seed(0, "surrogate")
