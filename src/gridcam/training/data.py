"""The training run's data plumbing: datasets from the data folders, seeded items, samplers, loaders.

* :func:`build_datasets` finds the train/val sets of an ImageNet-style (``DATA/train/<class>``) or
  COCO-style (``DATA/train2014`` + ``annotations/``) folder;
* :class:`SeededItems` seeds each item's augmentation by (run seed, epoch, index), so data do not
  depend on the number of workers or ranks;
* :class:`ResumableSampler` (training: DistributedSampler's permutation, can start mid-epoch) and
  :class:`ShardSampler` (validation: every image exactly once over the ranks);
* :class:`NamedCollate` carries the problems of unreadable images with the batch (from worker
  processes too; the loop reports them in the main process, :mod:`gridcam.problems`);
* :func:`build_loaders` puts them together into the DataLoaders of one rank.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from gridcam import data
from gridcam.runtime import distributed as du
from gridcam.runtime.rng import derive_seed
from gridcam.training.config import TrainConfig
from gridcam.errors import GridcamError
from gridcam.problems import Problem

__all__ = [
    "Datasets",
    "Loaders",
    "NamedCollate",
    "ResumableSampler",
    "SeededItems",
    "ShardSampler",
    "build_datasets",
    "build_loaders",
]


class _Skipped:
    """Marker for an item the dataset could not produce; ``problem`` says which file and why."""

    __slots__ = ("problem",)

    def __init__(self, problem: Problem):
        self.problem = problem

    def __reduce__(self):  # picklable across DataLoader workers (no __dict__ with __slots__)
        return (_Skipped, (self.problem,))


class SeededItems(Dataset):
    """Wrap a dataset so item ``i`` of epoch ``e`` draws its randomness (crop, flip, loader-side
    negatives and quadrant) from torch's RNG seeded with ``(seed, e, i)``.

    That makes a sample's augmentation independent of the worker that loads it, of the number of
    workers and of the number of ranks, so resumed and distributed runs see the same data.
    Items come from :func:`gridcam.data.load_item`, which reports nothing: an unusable item
    becomes a :class:`_Skipped` carrying its :class:`~gridcam.problems.Problem`, which the loop
    reports in the main process (a worker process would print it on its own account).
    """

    def __init__(self, base: Dataset, seed: int):
        self.base = base
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(derive_seed(self.seed, "item", self.epoch, index))
        try:
            item = data.load_item(self.base, index)
        finally:
            torch.set_rng_state(state)
        # None: an item the dataset left out and told itself (GridDataset: no negatives); the
        # collate functions count it as skipped
        return _Skipped(item) if isinstance(item, Problem) else item


class NamedCollate:
    """Collate that separates :class:`_Skipped` markers (their Problems travel with the batch)
    and hands the rest, with ``None`` in their place, to ``data.collate_skip``/``collate_grid``."""

    def __init__(self, inner: Callable[[list], Any]):
        self.inner = inner

    def __call__(self, batch: list) -> tuple[Any, list[Problem]]:
        found = [b.problem for b in batch if isinstance(b, _Skipped)]
        return self.inner([None if isinstance(b, _Skipped) else b for b in batch]), found


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (same permutation: ``randperm`` seeded with seed + epoch, padded,
    every ``world``-th index) that can skip its first ``start`` indices, so an epoch resumed
    mid-way continues with exactly the batches that were left."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Validation: rank ``r`` takes indices ``r, r + world, ...`` in order, without padding, so
    counts summed over ranks cover every image exactly once."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the workers must not die before the main process
    # has saved its checkpoint; they exit when the loader shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# -------------------------------------------------------------------------------- datasets
@dataclass
class Datasets:
    train: Dataset | None
    val: Dataset | None
    num_classes: int
    classes: list[str]
    multi_label: bool
    category_ids: list[int] | None = None


def _find_dir(root: Path, *candidates: str) -> Path | None:
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return None


def _norm(c: TrainConfig) -> dict[str, tuple[float, ...]]:
    """The normalisation of the model's input: ``--mean``/``--std``, else the model's own config
    (an outside model), else ImageNet's (:func:`gridcam.models.input_config`)."""
    from gridcam import models

    mean, std, _ = models.input_config(c.arch, c.mean, c.std)
    return {"mean": mean, "std": std}


def _train_transform(c: TrainConfig) -> data.transforms.Compose:
    """The training crops of both datasets: ``--image-size`` px, ``--crop-scale`` of the area."""
    return data.transforms.train_transform(c.image_size, scale=tuple(c.crop_scale), **_norm(c))


def build_datasets(c: TrainConfig, rank0: bool) -> Datasets:
    """The training set (None with ``evaluate``) and the validation set (None when absent)."""
    root = Path(c.data)
    if not root.is_dir():
        raise GridcamError(f"{root}: data directory not found")
    use_grid = c.negatives == "dataset" and c.lam > 0 and not c.evaluate
    if c.dataset == "imagenet":
        return _imagenet_datasets(c, root, use_grid, rank0)
    return _coco_datasets(c, root, use_grid, rank0)


def _imagenet_datasets(c: TrainConfig, root: Path, use_grid: bool, rank0: bool) -> Datasets:
    train_dir = _find_dir(root, "train", "ILSVRC/Data/CLS-LOC/train")
    if train_dir is None:
        raise GridcamError(f"{root}: no train/ folder (ImageNet layout: DATA/train/<class>/*.JPEG); "
                           "it also defines the class order")
    train = data.ImageFolder(train_dir, _train_transform(c))
    classes = list(train.classes)
    val = None
    if c.validate and _find_dir(root, "val", "ILSVRC/Data/CLS-LOC/val") is not None:
        resize = int(round(c.image_size * 256 / 224))
        val = data.imagenet_val(root, classes, data.transforms.val_transform(resize, c.image_size, **_norm(c)))
    elif c.validate and rank0:
        warnings.warn(f"{root}: no val/ folder; validation is skipped and model_best.pth.tar "
                      "follows the last epoch", stacklevel=3)
    base: Dataset = data.GridDataset(train) if use_grid else train
    return Datasets(None if c.evaluate else base, val, len(classes), classes, False)


def _coco_datasets(c: TrainConfig, root: Path, use_grid: bool, rank0: bool) -> Datasets:
    ann = root / "annotations" / f"instances_{c.train_split}.json"
    train = data.CocoDataset(root, c.train_split, _train_transform(c))
    val = None
    val_ann = root / "annotations" / f"instances_{c.val_split}.json"
    if c.validate and val_ann.is_file():
        val = data.CocoDataset(root, c.val_split, data.transforms.coco_val_transform(c.image_size, **_norm(c)))
        if list(val.categories) != list(train.categories):
            raise GridcamError(f"{val_ann}: categories differ from {ann}; train and val must share them")
    elif c.validate and rank0:
        warnings.warn(f"{val_ann} not found; validation is skipped and model_best.pth.tar follows "
                      "the last epoch", stacklevel=3)
    base = train
    if use_grid:
        index: Any = c.coco_negatives
        default_index = root / "annotations" / f"negatives_{c.train_split}.json"
        if index is None and default_index.is_file():
            index = default_index
        base = data.GridDataset(train, negatives_index=index)
    return Datasets(None if c.evaluate else base, val, train.num_classes, list(train.class_names), True,
                    [int(v) for v in train.categories])


# --------------------------------------------------------------------------------- loaders
@dataclass
class Loaders:
    """One rank's loaders. ``train``/``sampler``/``items`` are None for an evaluation-only run;
    the loop moves ``sampler`` and ``items`` to each epoch (and to the step it resumes at)."""

    train: DataLoader | None
    sampler: ResumableSampler | None
    items: SeededItems | None
    val: DataLoader | None


def _collate_val(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    return data.collate_skip(batch)


def _loader(ds: Dataset, batch: int, sampler: Sampler, workers: int, collate: Callable, device: torch.device,
            drop_last: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      worker_init_fn=_worker_init if workers > 0 else None)


def build_loaders(c: TrainConfig, ds: Datasets, seed: int, info: du.DistInfo, per_rank: int) -> Loaders:
    """This rank's training loader (seeded items, resumable sampler, batches of ``per_rank``
    without the last partial one) and validation loader (its shard, every image)."""
    train_items = SeededItems(ds.train, seed) if ds.train is not None else None
    grid_batches = c.negatives == "dataset" and c.lam > 0
    sampler = None
    loader = None
    if train_items is not None:
        sampler = ResumableSampler(train_items, info.world_size, info.rank, seed=derive_seed(seed, "sampler") % (2**62))
        collate = NamedCollate(data.collate_grid if grid_batches else data.collate_skip)
        loader = _loader(train_items, per_rank, sampler, c.workers, collate, info.device, drop_last=True)
        if len(loader) == 0:
            raise GridcamError(f"{c.data}: {len(train_items)} training images are fewer than one batch "
                               f"({per_rank} per rank); lower --batch-size")
    val_loader = None
    if ds.val is not None:
        val_items = SeededItems(ds.val, seed)
        val_loader = _loader(val_items, per_rank, ShardSampler(len(val_items), info.rank, info.world_size),
                             c.workers, NamedCollate(_collate_val), info.device, drop_last=False)
    return Loaders(loader, sampler, train_items, val_loader)
