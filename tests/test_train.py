"""Classifier builders and the resumable training recipe."""

import pytest
import torch
from torch.utils.data import TensorDataset

from medmark.models import build_classifier, load_classifier, save_classifier
from medmark.train import TrainConfig, predict_proba, resize_batch, train_classifier


def _toy(n=48, r=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, r, r, generator=g) * 0.5
    y = torch.arange(n) % 2
    x[y == 1, :, 4:10, 4:10] += 0.5  # bright square = class 1
    return TensorDataset(x.clamp(0, 1), y)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_one_channel_stem_and_two_way_head(arch):
    m = build_classifier(arch, seed=0)
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_seeded_init_is_reproducible_and_save_load_roundtrip(tmp_path):
    a, b = build_classifier("resnet18", seed=3), build_classifier("resnet18", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    save_classifier(a, tmp_path / "m.pt", meta={"seed": 3})
    c = load_classifier(tmp_path / "m.pt")
    assert c.meta == {"seed": 3}
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(a.eval()(x), c(x))


class _CountingDataset(torch.utils.data.Dataset):
    """Counts item fetches: how many epochs a run actually trained (one fetch per item per epoch)."""

    def __init__(self, inner: TensorDataset) -> None:
        self.inner, self.fetched = inner, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):  # noqa: ANN204 - same item type as the inner dataset
        self.fetched += 1
        return self.inner[i]


def test_resume_after_kill_gives_identical_weights(tmp_path):
    """Kill after epoch 0 of 3, rerun from a model with another initial seed: same weights as an
    uninterrupted run, and only epochs 1 and 2 are trained after the kill.

    Breakage guarded: the checkpoint load in ``train_classifier`` disabled (a rerun restarts
    from scratch). Because every epoch is re-seeded, a restart from the *same* init would end on
    the same weights; the resumed model is therefore built with seed 99 (only the checkpoint can
    bring it back to the seed-1 trajectory) and the epochs run after the kill are counted.
    """
    ds = _toy()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-3)
    full = build_classifier("resnet18", seed=1)
    train_classifier(full, ds, cfg, seed=1, device=torch.device("cpu"), last_path=tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=False)
    assert state["epoch"] == 2

    # Interrupted run: train one epoch, keep its last.pt, then a fresh process resumes it.
    _train_one_epoch_then_stop(build_classifier("resnet18", seed=1), ds, cfg, tmp_path / "b.pt")
    resumed = build_classifier("resnet18", seed=99)  # another init: only the checkpoint helps
    assert not torch.equal(resumed.net.conv1.weight, full.net.conv1.weight)
    counting = _CountingDataset(ds)
    hist = train_classifier(
        resumed, counting, cfg, seed=1, device=torch.device("cpu"), last_path=tmp_path / "b.pt"
    )
    assert counting.fetched == 2 * len(ds)  # epochs 1 and 2 only (drop_last keeps all 48 items)
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    for pa, pb in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


def _train_one_epoch_then_stop(model, ds, cfg, last):
    """Run the recipe and raise after the first checkpoint is written (a kill mid-training)."""
    import medmark.resumable as r

    real = r.save_state

    def save_then_die(path, state):
        real(path, state)
        raise KeyboardInterrupt

    r.save_state = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train_classifier(model, ds, cfg, seed=1, device=torch.device("cpu"), last_path=last)
    finally:
        r.save_state = real
    assert torch.load(last, weights_only=False)["epoch"] == 0


def test_checkpoint_with_other_config_is_refused(tmp_path):
    ds = _toy(n=16)
    m = build_classifier("resnet18", seed=0)
    train_classifier(
        m,
        ds,
        TrainConfig(epochs=1, batch_size=8),
        seed=0,
        device=torch.device("cpu"),
        last_path=tmp_path / "l.pt",
    )
    with pytest.raises(ValueError, match="another config"):
        train_classifier(
            m,
            ds,
            TrainConfig(epochs=2, batch_size=8),
            seed=0,
            device=torch.device("cpu"),
            last_path=tmp_path / "l.pt",
        )


def test_training_learns_a_learnable_task(tmp_path):
    ds = _toy(n=64)
    m = build_classifier("resnet18", seed=0)
    train_classifier(
        m,
        ds,
        TrainConfig(epochs=4, batch_size=16, lr=3e-3, augment=False),
        seed=0,
        device=torch.device("cpu"),
        last_path=tmp_path / "l.pt",
    )
    x, y = ds.tensors
    acc = (predict_proba(m, x, device=torch.device("cpu")).argmax(1) == y.numpy()).mean()
    assert acc > 0.8


def test_resize_batch_is_antialiased():
    x = torch.zeros(1, 1, 32, 32)
    x[..., ::2, ::2] = 1.0  # finest checkerboard-like pattern, mean 0.25
    small = resize_batch(x, 8)
    assert small.shape[-1] == 8
    assert torch.allclose(small, torch.full_like(small, 0.25), atol=0.05)
