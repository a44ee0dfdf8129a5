"""Unit tests of the training step, the checkpoint files and the loop's helpers (fast, no data)."""

from __future__ import annotations

import copy
import json
import math
import os
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridcam import grid, models
from gridcam.runtime import checkpoint as ckpt
from gridcam.runtime import rng
from gridcam.training import steps
from gridcam.training.log import EpochLog, jsonable
from gridcam.runtime.rng import derive_seed
from gridcam.training.config import TrainConfig, lr_milestones, parse_lr_steps
from gridcam.training.data import ResumableSampler, SeededItems, ShardSampler
from gridcam.errors import GridcamError


def _model(classes: int = 5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("tiny_resnet", num_classes=classes)


def _reference_cam(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor):
    """Independent Grad-CAM for an average-pooled ResNet, without autograd.grad:
    d logit_c / dA = W_c / (h w) everywhere, so the elementwise Grad-CAM is ReLU(W_c . A) / (h w),
    then the paper's normalisation. Returns (logits, cam (B,h,w))."""
    box = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: box.__setitem__("a", o))
    logits = model(x)
    handle.remove()
    a = box["a"]
    h, w = a.shape[-2:]
    cam = F.relu(torch.einsum("bk,bkhw->bhw", model.fc.weight[classes], a)) / (h * w)
    return logits, cam / (cam.sum(dim=(1, 2), keepdim=True) + 1e-8) + 1e-8


def _reference_composite(x, negs, q):
    B, C, H, W = x.shape
    out = torch.zeros(B, C, 2 * H, 2 * W)
    for b in range(B):  # the loop is fine in a reference
        others = iter(range(3))
        for cell in range(4):
            img = x[b] if cell == int(q[b]) else negs[b, next(others)]
            r, c = divmod(cell, 2)
            out[b, :, r * H:(r + 1) * H, c * W:(c + 1) * W] = img
    return out


def _reference_target(t, q):
    B, h, w = t.shape
    out = torch.zeros(B, 2 * h, 2 * w)
    for b in range(B):
        r, c = divmod(int(q[b]), 2)
        out[b, r * h:(r + 1) * h, c * w:(c + 1) * w] = t[b]
    return out


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------------------- the GC step
@pytest.mark.parametrize("detach", [False, True])
def test_gc_step_matches_an_independent_reference_loss_and_gradients(detach):
    model = _model()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 64, 64, generator=g)
    negs = torch.randn(4, 3, 3, 64, 64, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    q = torch.tensor([3, 0, 2, 1])

    out = steps.gc_step(model, models.cam_layer(model), x, y, lam=25.0, negatives=negs, quadrants=q,
                        detach_target=detach)
    out.loss.backward()

    logits, t = _reference_cam(ref, x, y)
    _, u = _reference_cam(ref, _reference_composite(x, negs, q), y)
    assert u.shape == (4, 4, 4) and t.shape == (4, 2, 2)
    target = _reference_target(t.detach() if detach else t, q)
    gc = (u - target).abs().mean()
    loss = F.cross_entropy(logits, y) + 25.0 * gc
    loss.backward()

    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert out.gc_loss.item() == pytest.approx(gc.item(), rel=1e-5)
    assert out.cls_loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert int(out.gc_samples) == 4
    for a, b in zip(_grads(model), _grads(ref)):
        # float32 sums in another order: compare relative to each tensor's scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_detach_target_changes_the_gradient_not_the_loss():
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    negs = torch.randn(4, 3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y, q = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])
    results = []
    for detach in (False, True):
        m = _model()
        out = steps.gc_step(m, models.cam_layer(m), x, y, lam=25.0, negatives=negs, quadrants=q,
                            detach_target=detach)
        out.loss.backward()
        results.append((out.loss.item(), m.layer1[0].conv1.weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert not torch.allclose(results[0][1], results[1][1])


class _Counter:
    def __init__(self, model):
        self.sizes = []
        self.handle = model.register_forward_hook(lambda m, i, o: self.sizes.append(tuple(i[0].shape[-2:])))


def test_lambda_zero_is_a_plain_step(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the baseline must not build composites or heatmaps")

    monkeypatch.setattr(steps.grid, "compose", forbidden)
    monkeypatch.setattr(steps.grid, "sample_negatives", forbidden)
    monkeypatch.setattr(steps.cam, "grad_cam", forbidden)
    monkeypatch.setattr(steps.cam, "capture", forbidden)
    model = _model()
    count = _Counter(model)
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 4])
    out = steps.gc_step(model, models.cam_layer(model), x, y, lam=0.0)
    assert count.sizes == [(64, 64)]  # exactly one forward, of the originals
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)
    assert out.gc_loss.item() == 0.0 and int(out.gc_samples) == 0


def test_gc_step_runs_two_forwards_original_then_double_size():
    model = _model()
    count = _Counter(model)
    out = steps.gc_step(model, models.cam_layer(model), torch.randn(4, 3, 64, 64),
                        torch.tensor([0, 1, 2, 3]), lam=1.0, generator=torch.Generator().manual_seed(0))
    assert count.sizes == [(64, 64), (128, 128)]
    assert out.quadrants.shape == (4,) and set(out.quadrants.tolist()) <= {0, 1, 2, 3}


def test_gc_step_says_when_every_heatmap_is_zero():
    model = _model()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    out = steps.gc_step(model, models.cam_layer(model), x, y, lam=1.0,
                        generator=torch.Generator().manual_seed(0))
    assert out.zero_maps.dtype == torch.bool and out.zero_maps.shape == () and not out.zero_maps
    assert steps.gc_step(model, models.cam_layer(model), x, y, lam=0.0).zero_maps is None
    torch.nn.init.zeros_(model.fc.weight)  # logits no longer depend on layer4: every map is zero
    out = steps.gc_step(model, models.cam_layer(model), x, y, lam=1.0,
                        generator=torch.Generator().manual_seed(0))
    assert bool(out.zero_maps) and out.gc_loss < 1e-7


def test_in_batch_negatives_never_use_the_cam_class_and_skip_samples_without_any():
    model = _model()
    # samples 0,1 are class 0, sample 2 class 1: sample 2's negatives are 0/1, sample 0's only 2
    y = torch.tensor([0, 0, 1])
    seen = {}
    real = grid.compose

    def spy(x, negatives, quadrants):
        seen["negatives"] = negatives
        return real(x, negatives, quadrants)

    x = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 64, 64).contiguous()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steps.grid, "compose", spy)
        out = steps.gc_step(model, models.cam_layer(model), x, y, lam=1.0,
                            generator=torch.Generator().manual_seed(0))
    ids = seen["negatives"][:, :, 0, 0, 0]  # each image is filled with its batch index
    assert ids[0].tolist() == [2.0, 2.0, 2.0] and ids[1].tolist() == [2.0, 2.0, 2.0]
    assert sorted(set(ids[2].tolist())) == [0.0, 1.0]
    assert int(out.gc_samples) == 3

    same = torch.tensor([1, 1, 1])  # nobody has a negative: L_gc is left out entirely
    out = steps.gc_step(model, models.cam_layer(model), x, same, lam=5.0)
    assert int(out.gc_samples) == 0 and out.gc_loss.item() == 0.0
    assert out.loss.item() == pytest.approx(out.cls_loss.item(), rel=1e-6)


def test_multi_label_loss_and_cam_class_among_present():
    model = _model(classes=4)
    targets = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    x = torch.randn(4, 3, 64, 64)
    for s in range(5):
        out = steps.gc_step(model, models.cam_layer(model), x, targets, lam=2.0, multi_label=True,
                            generator=torch.Generator().manual_seed(s))
        chosen = out.cam_classes
        assert bool(targets[torch.arange(4), chosen].all())
        assert out.loss.item() == pytest.approx(out.cls_loss.item() + 2.0 * out.gc_loss.item(), rel=1e-5)
    logits = model(x)
    assert out.cls_loss.item() == pytest.approx(
        80 * F.binary_cross_entropy_with_logits(logits, targets).item(), rel=1e-5)


def test_classification_loss_by_hand():
    logits = torch.zeros(2, 80)
    multi = torch.zeros(2, 80)
    multi[0, 3] = 1
    # every BCE term is log 2 at logit 0: 80 * mean = 80 log 2 (the paper's "80 * BCE")
    assert steps.classification_loss(logits, multi, True).item() == pytest.approx(80 * math.log(2), rel=1e-6)
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert steps.classification_loss(logits, torch.tensor([0, 1]), False).item() == pytest.approx(expected, rel=1e-6)


def test_channels_last_gives_the_same_losses():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1])
    losses = []
    for cl in (False, True):
        m = _model()
        fmt = torch.channels_last if cl else torch.contiguous_format
        m = m.to(memory_format=fmt)
        out = steps.gc_step(m, models.cam_layer(m), x.contiguous(memory_format=fmt), y, lam=3.0,
                            generator=torch.Generator().manual_seed(0), channels_last=cl)
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_amp_is_a_no_op_on_cpu():
    autocast, scaler = steps.amp_setup(torch.device("cpu"), True)
    assert scaler is None
    with autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "checkpoint_000.pth.tar"
    ckpt.save({"epoch": 1, "w": torch.arange(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        ckpt.save({"epoch": 2, "bad": lambda: 0}, path)  # cannot be pickled: fails mid-write
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000.pth.tar"]  # no temp left
    assert ckpt.load(path)["epoch"] == 1
    ckpt.copy_atomic(path, tmp_path / ckpt.BEST_NAME)
    assert (tmp_path / ckpt.BEST_NAME).read_bytes() == before


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_load_refuses_pickled_objects_and_garbage(tmp_path):
    bad = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "x": _Evil()}, bad)
    with pytest.raises(GridcamError, match="refused"):
        ckpt.load(bad)
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GridcamError, match="junk.pth.tar"):
        ckpt.load(junk)
    with pytest.raises(GridcamError, match="does not exist"):
        ckpt.load(tmp_path / "missing.pth.tar")


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    ckpt.save({"rng": rng.rng_state()}, tmp_path / "r.pth.tar")
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.normal())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    rng.set_rng_state(ckpt.load(tmp_path / "r.pth.tar")["rng"])
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.normal())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and expected[3] == got[3]


def test_scheduler_state_round_trips(tmp_path):
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    for _ in range(3):
        opt.step()
        sched.step()
    ckpt.save({"s": ckpt.scheduler_state(sched), "o": opt.state_dict()}, tmp_path / "s.pth.tar")
    opt2 = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[7], gamma=0.1)
    state = ckpt.load(tmp_path / "s.pth.tar")
    opt2.load_state_dict(state["o"])
    ckpt.load_scheduler_state(sched2, state["s"])
    assert sched2.milestones == Counter({2: 1, 4: 1}) and sched2.last_epoch == 3
    lrs = []
    for _ in range(3):  # epochs 4, 5, 6: the second milestone (4) still applies
        opt2.step()
        sched2.step()
        lrs.append(opt2.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.001, 0.001, 0.001])


def test_find_latest_prefers_the_furthest_checkpoint(tmp_path):
    assert ckpt.find_latest(tmp_path) is None
    for i in (1, 2, 11):
        ckpt.save({"epoch": i, "step": 0}, tmp_path / ckpt.checkpoint_name(i))
    assert ckpt.find_latest(tmp_path).name == "checkpoint_011.pth.tar"
    ckpt.save({"epoch": 10, "step": 5}, tmp_path / ckpt.LAST_NAME)  # mid-epoch 11: behind 011 (= 11, 0)
    assert ckpt.find_latest(tmp_path).name == "checkpoint_011.pth.tar"
    ckpt.save({"epoch": 11, "step": 5}, tmp_path / ckpt.LAST_NAME)
    assert ckpt.find_latest(tmp_path).name == ckpt.LAST_NAME


# ---------------------------------------------------------------------------- loop helpers
def test_derive_seed_is_stable_and_distinct():
    a = derive_seed(1, "item", 0, 5)
    assert a == derive_seed(1, "item", 0, 5) and 0 <= a < 2**63
    assert len({derive_seed(1, "item", e, i) for e in range(3) for i in range(50)}) == 150


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return None if i == 5 else (torch.rand(3), i)


def test_seeded_items_depend_only_on_seed_epoch_and_index():
    ds = SeededItems(_RandomItems(), seed=7)
    first = [ds[i][0] for i in range(5)]
    torch.manual_seed(123)  # the global RNG does not matter ...
    state = torch.get_rng_state()
    backwards = [ds[i][0] for i in reversed(range(5))][::-1]  # ... nor the order
    assert torch.equal(torch.get_rng_state(), state)  # and is left untouched
    assert all(torch.equal(a, b) for a, b in zip(first, backwards))
    ds.epoch = 1
    assert not torch.equal(ds[0][0], first[0])
    skipped = ds[5]
    assert type(skipped).__name__ == "_Skipped" and skipped.problem.file == "#5"


def test_resumable_sampler_skips_exactly_the_consumed_indices():
    ds = list(range(10))
    full = ResumableSampler(ds, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    order = list(full)
    part = ResumableSampler(ds, num_replicas=1, rank=0, seed=3)
    part.set_epoch(2)
    part.start = 4
    assert list(part) == order[4:] and len(part) == 6
    ranks = []
    for r in range(2):
        s = ResumableSampler(ds, num_replicas=2, rank=r, seed=3)
        s.set_epoch(2)
        ranks.append(list(s))
    assert ranks[0] == order[0::2] and ranks[1] == order[1::2]  # a global batch = the 1-process batch


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(ShardSampler(7, r, 3)) for r in range(3)] == [3, 2, 2]


def test_lr_milestones_and_parsing():
    assert lr_milestones(TrainConfig(epochs=90)) == [30, 60]
    assert lr_milestones(TrainConfig(epochs=100)) == [30, 60, 90]
    assert lr_milestones(TrainConfig.for_coco()) == [24, 30]
    assert lr_milestones(TrainConfig(lr_steps=(5, 8))) == [5, 8]
    assert parse_lr_steps("24, 30") == (24, 30)
    with pytest.raises(GridcamError):
        parse_lr_steps("30,20")
    with pytest.raises(GridcamError):
        parse_lr_steps("a")


def test_epoch_log_writes_valid_json_lines(tmp_path):
    log = EpochLog(tmp_path, tensorboard=False)
    log.write({"epoch": 1, "train": {"loss": float("nan"), "n": torch.tensor(3)}})
    log.write({"epoch": 2, "train": {"loss": 0.5, "n": 4}})
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 1, "train": {"loss": "nan", "n": 3}}, {"epoch": 2, "train": {"loss": 0.5, "n": 4}}]
    assert jsonable({"a": (1, float("inf"))}) == {"a": [1, "inf"]}
    assert not EpochLog(tmp_path / "other", enabled=False).path.parent.exists()
