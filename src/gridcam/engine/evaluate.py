"""``gridcam evaluate imagenet|coco``: score explanations in ONE pass over the validation images.

The paper runs three scripts (pointing game, stochastic pointing game, content heatmap), each a full
pass at batch size 1 that recomputes Grad-CAM. Here one pass computes, for every requested
explanation method, every requested metric, plus the classification scores (top-1/top-5 for
ImageNet, per-class and overall P/R/F1 for COCO) from the same forward:

1. Images whose transformed size (shorter side ``--input-resize``, no crop) is equal are batched
   together: the size is known from the dataset's ``.sizes`` without decoding, so a batch plan is
   made up front (:func:`plan_batches`). All T target classes of an image come from one forward
   (targets padded to the batch's largest T).
2. The loader decodes the images and builds the masks at the original resolution (data layer), in
   ``-j`` DataLoader worker processes or, with ``-j 0``, in a background thread of the main
   process (PIL and numpy release the GIL, so loading overlaps the model without any
   inter-process copies; the faster choice on 2 CPU cores). On a CPU host with <= 2 intra-op
   threads the model then runs in a thread of its own with one intra-op thread, one batch ahead
   of the main thread's scoring (:func:`_precompute`): three stages that keep 2 cores busy.
3. Grad-CAM: the trunk before the CAM layer runs without autograd (only ``d logits / d A`` is
   needed), see :func:`_explain`; bit-identical heatmaps to ``cam.explain`` (for the same
   intra-op thread count). Max-pool layers run on oneDNN (exact, :func:`_fast_max_pool`). On CPU
   a batch goes through the model in micro-batches sized to keep activations cache-sized
   (:func:`micro_batch_size`: resnet18 at 448 px one image at a time, tiny_resnet at 224 px 16).
4. Per (image, class): heatmap -> bilinear resize to the ORIGINAL image size -> skipped and counted
   if its sum is <= 0 -> PG (argmax), SPG (``--spg-samples`` inverse-CDF draws, seeded per image
   from (seed, image index)), hit tests by :func:`gridcam.metrics.hit_points`; CH (mass inside
   the mask).
5. Totals are integer counts (:mod:`gridcam.metrics`), so they merge exactly across ranks and
   across an interrupted-and-resumed run.

Streaming and resume (``--per-image FILE.jsonl``): one JSON line per scored or skipped pair and one
``"done"`` line per image (with what the classification scores need), written batch by batch and
flushed. The first line is a header with the settings. On restart the file is read, images of
completed batches are folded into the totals without recomputation, the file is rewritten without
any partial batch, and only the remaining batches run. Under ``torchrun`` each rank appends to
``FILE.part<rank>``; at the end rank 0 appends the parts to FILE and deletes them (an interrupted
distributed run leaves the parts, which the next run, with any number of ranks, reads too).

Distributed: the batch plan is the same on every rank and batches are dealt round-robin, so a batch
contains the same images whatever the world size; the SPG random numbers depend only on
(seed, image index). Hence the numbers are exactly those of one process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from gridcam import metrics as M
from gridcam.engine import distributed as D
from gridcam.engine.checkpoint import atomic_file
from gridcam.errors import GridcamError

__all__ = [
    "METRICS", "Evaluation", "atomic_write_json", "evaluate", "format_table", "main",
    "plan_batches", "spg_seed",
]

#: Short metric names (``--metrics``) -> keys in results.json.
METRICS: dict[str, str] = OrderedDict(
    pg="pointing_game", spg="stochastic_pointing_game", ch="content_heatmap")

_HEADER_KEY = "gridcam_per_image"
_FORMAT_VERSION = 1
#: Largest number of heatmap pixels (pairs x H x W) upsampled and scored at once; bounds memory
#: (float32 + float64 copies, ~15 bytes/pixel) independently of the batch size and of T.
_MAX_PIXELS = 8_000_000
#: The same on CPU, where smaller chunks stay in cache: scoring 500x375 pairs took 0.92 ms/image
#: in chunks of ~5 pairs (1 M pixels) vs 1.3 in chunks of 16 and 1.23 one pair at a time.
_CPU_SCORE_PIXELS = 1_000_000
#: CPU: the model runs a batch in micro-batches whose largest activation (module output) holds at
#: most this many values (~17 MB float32), see :func:`micro_batch_size`.
CPU_ACTIVATION_BUDGET = 4_500_000
#: Small CPU hosts: a model above this many MACs per input pixel gets all intra-op threads in the
#: pipelined model stage, a lighter one a single thread (see :func:`evaluate`).
MODEL_BOUND_MACS_PER_PIXEL = 5000.0
#: Pipelined model stage (see :func:`evaluate`) on CPU hosts with at most this many intra-op
#: threads; measured on 2 cores only, so larger hosts keep the two-stage loop.
_PIPELINE_MAX_THREADS = 2


# ------------------------------------------------------------------------------------ helpers
def spg_seed(seed: int, index: int) -> int:
    """Seed of image ``index``'s SPG generator: a function of (seed, index) only, so the draws do
    not depend on batching, ranks or resumption. (SplitMix64-style mixing of the two.)"""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def spg_uniforms(seed: int, index: int, classes: int, samples: int) -> torch.Tensor:
    """(classes, samples) float64 uniforms of image ``index`` (row t for its t-th target class).

    Every method uses the same numbers (common random numbers make method comparisons less noisy).
    """
    g = torch.Generator().manual_seed(spg_seed(seed, index))
    return torch.rand((classes, samples), generator=g, dtype=torch.float64)


def plan_batches(keys: Sequence[Any], indices: Iterable[int], batch_size: int) -> list[list[int]]:
    """Group ``indices`` into batches of equal ``keys[i]`` (the transformed image size).

    Within a key, indices keep their order and are cut into chunks of ``batch_size``; batches are
    ordered by their first index. Deterministic: every rank computes the same plan.
    """
    if batch_size < 1:
        raise GridcamError(f"--batch-size must be >= 1, got {batch_size}")
    groups: dict[Any, list[int]] = OrderedDict()
    for i in indices:
        groups.setdefault(keys[i], []).append(i)
    batches = [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]
    batches.sort(key=lambda b: b[0])
    return batches


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (never a half-written file)."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def _parse_list(text: str | Sequence[str], allowed: Iterable[str], what: str) -> list[str]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    items = [s for s in items if s]
    allowed = list(allowed)
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise GridcamError(f"unknown {what} {', '.join(bad) or '(none given)'}; "
                           f"choose from: {', '.join(allowed)}")
    return list(OrderedDict.fromkeys(items))


# ------------------------------------------------------------------------- dataset plumbing
class _Items(torch.utils.data.Dataset):
    """Wraps a localisation dataset for the evaluator's loader.

    An unreadable image (the dataset returns None) becomes a small ``{"index", "unreadable"}``
    record so the evaluator can count it and mark it done for resumption.
    """

    def __init__(self, base: Any):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        if item is None:
            path, reason = _why_none(self.base, i)
            return {"index": i, "unreadable": True, "path": path, "reason": reason}
        item = dict(item)
        item.setdefault("index", i)
        return item


@dataclass(frozen=True)
class _Scoring:
    """What the scoring of every batch needs besides the heatmaps."""

    metrics: tuple[str, ...]
    tolerance: float
    samples: int
    seed: int


def _why_none(ds: Any, i: int) -> tuple[str, str]:
    """(path, message) for an item the dataset returned as None (its records say why, if any)."""
    rec = None
    records = getattr(ds, "records", None)
    if isinstance(records, (list, tuple)) and i < len(records):
        rec = records[i]
    path = str(getattr(rec, "path", None) or f"#{i}")
    if rec is None and callable(getattr(ds, "path", None)):
        try:
            path = str(ds.path(i))
        except Exception:  # only used for a message
            pass
    for attr in ("paths", "images", "samples", "files"):
        seq = getattr(ds, attr, None)
        if path.startswith("#") and isinstance(seq, (list, tuple)) and i < len(seq):
            v = seq[i]
            path = str(v[0] if isinstance(v, (tuple, list)) else v)
            break
    return path, str(getattr(rec, "error", None) or "unreadable image")


#: Counting keys for the data layer's skip messages (which name files): message prefix -> key.
_REASON_KEYS = (
    ("no annotation", "missing annotation"),
    ("malformed annotation", "malformed annotation"),
    ("unreadable", "unreadable image"),
    ("unknown wnid", "unknown wnid"),
    ("boxes outside", "boxes outside the image"),
    ("all boxes difficult", "all boxes difficult"),
    ("no objects", "no objects in the annotation"),
    ("cannot decode", "undecodable segmentation"),
    ("segmentation size", "segmentation size mismatch"),
    ("empty mask", "empty mask"),
)


def reason_key(message: str) -> str:
    """Short category of a skip message, so counts are not split by file name."""
    low = message.lower()
    for prefix, key in _REASON_KEYS:
        if low.startswith(prefix):
            return key
    return message


def _collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No stacking: the evaluator groups items by size itself."""
    return list(items)


def _materialize(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy the tensors a worker sent (shared memory) into this process's own memory.

    The first touch of a shared-memory page costs a page fault; for a batch of float32 images that
    made ``torch.stack`` in the main loop take longer than the model's forward. Done in
    :func:`_prefetch`'s thread (the copies release the GIL), the faults overlap the compute.
    """
    out = []
    for it in items:
        it = dict(it)
        for key in ("image", "masks"):
            if isinstance(it.get(key), torch.Tensor):
                it[key] = it[key].clone()
        out.append(it)
    return out


def _prestack(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stack the images of each shape group once, in the loader thread (off the model's thread).

    Every readable item gets ``"_stacked"`` (its group's (B,3,h,w) tensor, shared) and its
    ``"image"`` becomes a view into it; :func:`_process_group` uses the stacked tensor as is when
    its group is exactly that one (groups are formed the same way, in item order).
    """
    groups: dict[tuple[int, ...], list[int]] = OrderedDict()
    for k, it in enumerate(items):
        if not it.get("unreadable") and isinstance(it.get("image"), torch.Tensor):
            groups.setdefault(tuple(it["image"].shape), []).append(k)
    out = list(items)
    for members in groups.values():
        stacked = torch.stack([items[k]["image"] for k in members])
        for b, k in enumerate(members):
            out[k] = dict(items[k], image=stacked[b], _stacked=stacked)
    return out


def _loader_thread_init(nice: int = 10) -> None:
    """Set up a loader thread: one intra-op thread (its few torch ops are small, and a new thread
    would otherwise take whatever count another thread set last) and a lower priority, so that it
    yields the CPU to the model's threads (Linux: per-thread nice).

    The model is the slowest stage; loading threads at a lower priority use the cores whenever the
    model's threads do not, instead of stalling its parallel (OpenMP) regions.
    """
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS would renice the whole process
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
        except (OSError, AttributeError):
            pass


def _thread_loader(source: torch.utils.data.Dataset, batches: Sequence[Sequence[int]],
                   threads: int = 2, depth: int = 2) -> Iterator[list[dict[str, Any]]]:
    """``-j 0``: load the batches' items in background threads of this process, in plan order.

    Decoding, resizing (PIL) and building masks (torch) release the GIL, so loading overlaps the
    model and the scoring without copying images between processes (which cost more than it
    saved on 2 cores). Up to ``depth`` batches are in flight; each batch's items are loaded in
    parallel, then stacked (:func:`_prestack`) by a job queued after them (FIFO: its items are
    done or running by then, so it never waits on a queued job). Errors re-raise here.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gridcam-load",
                              initializer=_loader_thread_init)
    pending: deque = deque()
    todo = iter(batches)

    def submit() -> None:
        b = next(todo, None)
        if b is not None:
            futures = [pool.submit(source.__getitem__, int(i)) for i in b]
            pending.append(pool.submit(lambda fs=futures: _prestack([f.result() for f in fs])))

    try:
        for _ in range(depth):
            submit()
        while pending:
            items = pending.popleft().result()
            submit()
            yield items
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prefetch(iterable: Iterable[Any], fn: Any, depth: int = 2,
              threads: int | None = None) -> Iterator[Any]:
    """Yield ``fn(x)`` for ``x`` in ``iterable``, computed one or two ahead in a thread.

    ``threads``: intra-op threads of that thread (with OpenMP builds of PyTorch, the usual ones,
    the count is a per-thread setting, so the consumer's stays as it is; threads started later
    take the last count set, which is why loader threads set their own).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def run() -> None:
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            for x in iterable:
                y = fn(x)
                while not stop.is_set():
                    try:
                        q.put(("ok", y), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("ok", end))
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(("error", exc))

    thread = threading.Thread(target=run, name="gridcam-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, y = q.get()
            if kind == "error":
                raise y
            if y is end:
                return
            yield y
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def _transformed_keys(dataset: Any, input_resize: int | None) -> list[Any]:
    """Per image, the transformed (h, w) computed from ``dataset.sizes`` (no decoding)."""
    sizes = getattr(dataset, "sizes", None)
    if sizes is None or input_resize is None or len(sizes) != len(dataset):
        return [None] * len(dataset)  # unknown: one bucket; batches are split by shape later
    from gridcam.data.transforms import resized_output_size

    keys: list[Any] = []
    for s in sizes:
        if s is None or int(s[0]) <= 0 or int(s[1]) <= 0:  # unknown (e.g. unreadable image)
            keys.append(None)
        else:
            w, h = resized_output_size(int(s[1]), int(s[0]), int(input_resize))
            keys.append((h, w))
    return keys


# -------------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Running totals of one evaluation (one rank, or merged).

    loc: method -> :class:`gridcam.metrics.LocalizationCounts`; cls: top-k or multi-label counts;
    images: images processed (decoded and scored); skipped_images: {reason: images the dataset
    could not give (missing annotation, unreadable file)}; data_skipped: {reason: pairs the data
    layer left out}.
    """

    loc: dict[str, M.LocalizationCounts]
    cls: M.TopKCounts | M.MultiLabelCounts
    images: int = 0
    skipped_images: dict[str, int] = field(default_factory=dict)
    data_skipped: dict[str, int] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return {"loc": {m: c.state() for m, c in self.loc.items()},
                "cls": self.cls.state(), "multilabel": isinstance(self.cls, M.MultiLabelCounts),
                "images": self.images, "skipped_images": dict(self.skipped_images),
                "data_skipped": dict(self.data_skipped)}

    def merge_state(self, s: Mapping[str, Any]) -> None:
        for m, cs in s["loc"].items():
            self.loc[m].merge(M.LocalizationCounts.from_state(cs))
        other = (M.MultiLabelCounts if s["multilabel"] else M.TopKCounts).from_state(s["cls"])
        self.cls.merge(other)  # type: ignore[arg-type]
        self.images += s["images"]
        for k, v in s["skipped_images"].items():
            self.skipped_images[k] = self.skipped_images.get(k, 0) + v
        for k, v in s["data_skipped"].items():
            self.data_skipped[k] = self.data_skipped.get(k, 0) + v

    def skip_pairs(self, reason: str, n: int = 1) -> None:
        """Pairs the data layer left out: counted once globally and as skipped for every method."""
        self.data_skipped[reason] = self.data_skipped.get(reason, 0) + n
        for c in self.loc.values():
            c.skip(reason, n)

    def results(self, metrics: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m, c in self.loc.items():
            r = c.result()
            out[m] = {METRICS[k]: r[METRICS[k]] for k in METRICS if k in metrics}
            out[m].update(evaluated=r["evaluated"], skipped=r["skipped"],
                          skipped_reasons=r["skipped_reasons"])
        return out


class _Writer:
    """Appends per-image JSON lines, one flushed write per batch (so a batch is all-or-nothing
    except for a crash in the middle of one write, which resumption detects)."""

    def __init__(self, path: Path | None):
        self.f = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.f is None or not records:
            return
        self.f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def _label_list(label: Any) -> list[int]:
    t = torch.as_tensor(label)
    return torch.nonzero(t > 0.5).flatten().tolist()


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed JSON objects of a JSON-lines file; a torn (unparsable) line is ignored."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the tail of an interrupted write
            if isinstance(rec, dict):
                yield rec


def _fold_record(ev: Evaluation, rec: Mapping[str, Any]) -> None:
    """Add one stored per-image record to the totals (exactly what computing it added)."""
    if rec.get("done"):
        if "skipped" in rec:
            key = rec["skipped"]
            ev.skipped_images[key] = ev.skipped_images.get(key, 0) + 1
            return
        ev.images += 1
        if isinstance(ev.cls, M.MultiLabelCounts):
            C = ev.cls.num_classes
            pred = torch.zeros(1, C, dtype=torch.bool)
            truth = torch.zeros(1, C, dtype=torch.bool)
            pred[0, rec["pred"]] = True
            truth[0, rec["labels"]] = True
            ev.cls.add_predictions(pred, truth)
        elif "topk" in rec:
            ev.cls.add_flags(torch.tensor([rec["topk"]], dtype=torch.bool))
        return
    if "method" not in rec:  # a pair the data layer left out: counts for every method
        ev.skip_pairs(rec["skipped"])
        return
    counts = ev.loc[rec["method"]]
    if "skipped" in rec:
        counts.skip(rec["skipped"])
    else:
        counts.add_record(rec["class"], rec.get("pg_hit"), rec.get("spg"), rec.get("ch"))


def _prepare_resume(path: Path, header: dict[str, Any], batches: list[list[int]],
                    ev: Evaluation) -> set[int]:
    """Read ``path`` (and its ``.part*`` files), fold the images of completed batches into ``ev``,
    rewrite ``path`` with only those (header first), and return their indices.

    Raises GridcamError when the file was written with different settings.
    """
    sources = [p for p in [path, *sorted(path.parent.glob(path.name + ".part*"))] if p.is_file()]
    done: set[int] = set()
    for src in sources:
        for rec in _read_lines(src):
            if _HEADER_KEY in rec:
                old = rec.get("config", {})
                diff = sorted(k for k in set(old) | set(header["config"])
                              if old.get(k) != header["config"].get(k))
                if diff:
                    raise GridcamError(
                        f"{src} was written by an evaluation with other settings ("
                        + "; ".join(f"{k}: {old.get(k)!r} there, {header['config'].get(k)!r} now"
                                    for k in diff)
                        + "); remove it or choose another --per-image file")
            elif rec.get("done"):
                done.add(int(rec["index"]))
    keep = {i for b in batches if all(i in done for i in b) for i in b}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps(header, separators=(",", ":")) + "\n")
        for src in sources:
            for rec in _read_lines(src):
                if _HEADER_KEY not in rec and int(rec.get("index", -1)) in keep:
                    _fold_record(ev, rec)
                    out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    for src in sources[1:]:
        src.unlink()
    return keep


def _append_parts(path: Path, world: int) -> None:
    """Rank 0, after the pass: append every rank's part file to ``path`` and delete the parts."""
    with open(path, "a", encoding="utf-8") as out:
        for r in range(world):
            part = path.with_name(f"{path.name}.part{r}")
            if part.is_file():
                with open(part, encoding="utf-8") as f:
                    for line in f:
                        out.write(line)
                part.unlink()
        out.flush()


def _is_multilabel(dataset: Any) -> bool:
    name = type(dataset).__name__.lower()
    return "coco" in name or bool(getattr(dataset, "multilabel", False))


def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    layer: nn.Module | None = None,
    methods: Sequence[str] = ("gradcam",),
    metrics: Sequence[str] = ("pg", "spg", "ch"),
    method_options: Mapping[str, Any] | None = None,
    tolerance: float = 15.0,
    spg_samples: int = 100,
    seed: int = 0,
    batch_size: int = 16,
    workers: int = 0,
    limit: int | None = None,
    input_resize: int | None = None,
    multilabel: bool | None = None,
    num_classes: int | None = None,
    per_image: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score explanations of ``model`` on a localisation dataset in one pass.

    Args:
        model: classifier (put in ``eval()`` mode here). layer: its CAM layer (default
            ``models.cam_layer(model)``).
        dataset: a localisation dataset (``data.ImageNetValLoc`` / ``data.CocoLoc`` item layout:
            ``ds[i] -> dict(image (3,h,w), size (H,W), path, index, classes (T,), masks (T,H,W) bool,
            label, skipped [(class, reason)])`` or None for an unreadable image). ``.sizes``
            (original (H,W) per image) enables size bucketing; without it, batches are consecutive
            indices split by actual shape.
        methods: names in ``gridcam.cam.METHODS``. metrics: subset of {"pg", "spg", "ch"}.
        method_options: passed to every ``cam.explain`` call (e.g. ``{"variant": "elementwise"}``).
        tolerance: pointing-game tolerance in px (strict). spg_samples: SPG draws per pair.
        seed: SPG seed (the draws of image i depend only on (seed, i)).
        batch_size: images per forward. workers: DataLoader worker processes.
        limit: evaluate only images ``0..limit-1``.
        input_resize: shorter side the dataset's transform resizes to (for size bucketing).
        multilabel: COCO-style P/R/F1 instead of top-1/top-5 (default: guessed from the dataset).
        num_classes: C (default: ``out_features`` of the model's last ``nn.Linear``, else
            ``dataset.num_classes``).
        per_image: JSON-lines file for per-image records; resumed when it exists.
        device: where the model runs (default: the model's device).
        progress: tqdm bar on rank 0. config: settings recorded in the per-image header and
            results (a changed setting makes a resume refuse the old file).
    Returns:
        ``{"metrics": {method: {...}}, "classification": {...}, "images": {...}, "config": {...}}``
        (the results.json layout), identical on every rank.
    """
    t0 = time.perf_counter()
    rank = D.dist.get_rank() if (D.dist.is_available() and D.dist.is_initialized()) else 0
    world = D.dist.get_world_size() if (D.dist.is_available() and D.dist.is_initialized()) else 1
    metrics = _parse_list(metrics, METRICS, "metric")
    from gridcam import cam

    methods = _parse_list(methods, cam.METHODS, "explanation method")
    if spg_samples < 1:
        raise GridcamError(f"--spg-samples must be >= 1, got {spg_samples}")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise GridcamError(f"--tolerance must be a finite number > 0, got {tolerance}")
    if layer is None:
        from gridcam import models

        layer = models.cam_layer(model)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model = model.to(device).eval()
    if multilabel is None:
        multilabel = _is_multilabel(dataset)
    if num_classes is None:
        num_classes = _model_classes(model) or int(getattr(dataset, "num_classes", 0)) or None
    if not num_classes:
        raise GridcamError("cannot tell the number of classes; pass num_classes")
    opts = dict(method_options or {})

    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    keys = _transformed_keys(dataset, input_resize)
    batches = plan_batches(keys, range(n), batch_size)

    ev = Evaluation(
        loc={m: M.LocalizationCounts(num_classes=num_classes, samples=spg_samples) for m in methods},
        cls=M.MultiLabelCounts(num_classes) if multilabel else M.TopKCounts((1, 5)))
    ks = (1, 5)
    cfg = dict(config or {})
    cfg.update(methods=list(methods), metrics=list(metrics), tolerance=tolerance,
               spg_samples=spg_samples, seed=seed, method_options=_jsonable(opts))
    header = {_HEADER_KEY: _FORMAT_VERSION, "config": cfg}

    # ---- resumption: rank 0 folds finished batches, everyone learns which indices are done
    path = Path(per_image) if per_image is not None else None
    done: set[int] = set()
    if path is not None:
        status: tuple[str, Any] = ("ok", [])
        if rank == 0:
            try:
                if path.exists():
                    status = ("ok", sorted(_prepare_resume(path, header, batches, ev)))
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(json.dumps(header, separators=(",", ":")) + "\n")
            except (GridcamError, OSError) as exc:
                status = ("error", str(exc))
        # Every rank learns the outcome, so a refused file stops all of them (no rank left waiting).
        status = D.broadcast_object(status)  # type: ignore[assignment]
        if status[0] == "error":
            raise GridcamError(status[1])
        done = set(status[1])
    resumed = len(done)
    pending = [b for b in batches if not all(i in done for i in b)]
    mine = pending[rank::world]

    writer = _Writer(None if path is None else
                     (path if world == 1 else path.with_name(f"{path.name}.part{rank}")))
    source = _Items(dataset)
    scoring = _Scoring(tuple(metrics), float(tolerance), int(spg_samples), int(seed))
    bar = _progress(sum(len(b) for b in mine), enabled=progress and rank == 0,
                    initial=resumed if world == 1 else 0)
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            source, batch_sampler=mine, num_workers=workers,
            # No pin_memory: stacking pinned tensors allocates page-locked memory for every batch,
            # which cost more than the plain host-to-device copies it would speed up.
            collate_fn=_collate_items, pin_memory=False)
        # A thread copies the workers' shared-memory tensors (see _materialize) and stacks.
        batches_in: Iterator[list[dict[str, Any]]] = _prefetch(
            loader, lambda x: _prestack(_materialize(x)))
    else:
        batches_in = _thread_loader(source, mine)
    # Small CPU hosts: a three-stage pipeline. The model runs in its own thread one batch ahead of
    # the main thread's scoring (one intra-op thread: its ops are small and an idle OpenMP team
    # would spin), while the loader threads decode the next batches at a lower priority. The model
    # stage gets one intra-op thread when the stages are of a size (a light model: 2 cores stay
    # busy without an OpenMP team whose barrier spins whenever another stage holds a core), all of
    # them when it dominates. On 2 cores, interleaved runs: tiny_resnet (1.6k MACs/pixel) 245 vs
    # 227 img/s with 1 vs 2 threads at 224 px, 79 vs 73 at 448 px; resnet18 (36k MACs/pixel)
    # 25 vs 37 img/s at 224 px. The main thread's intra-op thread count is restored afterwards.
    threads0 = torch.get_num_threads()
    pipeline = device.type == "cpu" and threads0 <= _PIPELINE_MAX_THREADS
    if pipeline:
        prof = profile_model(model)
        heavy = prof is not None and prof.macs > MODEL_BOUND_MACS_PER_PIXEL
        torch.set_num_threads(1)
        batches_in = _prefetch(batches_in, lambda x: _precompute(
            x, model, layer, methods, opts, device, seed), depth=1,
            threads=threads0 if heavy else max(1, threads0 - 1))
    try:
        for items in batches_in:
            records = _process_batch(items, model, layer, methods, opts, ev, device, scoring)
            writer.write(records)
            if bar is not None:
                bar.update(len(items))
    finally:
        if hasattr(batches_in, "close"):
            batches_in.close()  # stops the prefetch thread if the loop ended early
        writer.close()
        if bar is not None:
            bar.close()
        if pipeline:
            torch.set_num_threads(threads0)

    # ---- merge every rank's counts exactly (integers), then the per-image parts
    states = D.all_gather_object(ev.state())
    total = Evaluation(
        loc={m: M.LocalizationCounts(num_classes=num_classes, samples=spg_samples) for m in methods},
        cls=M.MultiLabelCounts(num_classes) if multilabel else M.TopKCounts(ks))
    for s in states:
        total.merge_state(s)  # type: ignore[arg-type]
    if path is not None and world > 1:
        D.barrier()
        if rank == 0:
            _append_parts(path, world)
        D.barrier()

    skipped_images = dict(total.skipped_images)
    no_ann = int(getattr(dataset, "skipped_no_annotations", 0) or 0)
    if no_ann and limit is None:  # COCO images without annotations never enter the dataset
        skipped_images["no annotations"] = skipped_images.get("no annotations", 0) + no_ann
    cfg_out = dict(cfg)
    cfg_out.update(batch_size=batch_size, workers=workers, limit=limit, world_size=world,
                   per_image=None if path is None else str(path))
    return {
        "metrics": total.results(metrics),
        "classification": total.cls.result(),
        "images": {"evaluated": total.images, "skipped": sum(skipped_images.values()),
                   "skipped_reasons": dict(sorted(skipped_images.items())),
                   "resumed": resumed, "requested": n,
                   "seconds": round(time.perf_counter() - t0, 3)},
        "skipped_pairs": dict(sorted(total.data_skipped.items())),
        "config": cfg_out,
    }


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return {k: repr(v) for k, v in obj.items()} if isinstance(obj, Mapping) else repr(obj)


def _model_classes(model: nn.Module) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return int(last.out_features) if last is not None else None


def _progress(total: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total + initial, initial=initial, unit="img", dynamic_ncols=True,
                file=sys.stderr)


#: oneDNN pooling available (PyTorch CPU builds normally have it).
_MKLDNN = bool(torch.backends.mkldnn.is_available())


def _fast_max_pool(model: nn.Module) -> list[Any]:
    """Hooks making the model's ``nn.MaxPool2d`` layers run in channels-last on CPU without grad.

    PyTorch's CPU max-pool kernel for contiguous (NCHW) input is slow: for ResNet's stem pool it
    took as long as all the convolutions of tiny_resnet. The channels-last kernel is ~7x faster,
    and oneDNN's (float32, no dilation: the input is reordered to an ``mkldnn`` tensor and the
    result back) another ~2x (2.2 vs 4.4 ms for a (16,16,112,149) batch on 2 cores). A maximum is
    exact, so pooling a converted copy and converting the result back gives bit-identical values,
    and the layers after it see the same NCHW tensor as before. Only while
    grad is off (the trunk before the CAM layer, see :func:`_explain`): with grad, the pool's
    backward could break ties between equal values differently. Returns the hook handles.
    """
    handles = []
    for m in model.modules():
        if type(m) is not nn.MaxPool2d or m.return_indices:
            continue
        converted: list[Any] = [None]  # None, "cl" (channels-last) or "mkldnn", per call
        dil = m.dilation if isinstance(m.dilation, (tuple, list)) else (m.dilation,)
        onednn_ok = _MKLDNN and all(int(d) == 1 for d in dil)

        def pre(_m: nn.Module, inputs: tuple, converted: list[Any] = converted,
                onednn_ok: bool = onednn_ok) -> Any:
            x = inputs[0] if len(inputs) == 1 else None
            converted[0] = None
            if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu"
                    and x.layout == torch.strided and not torch.is_grad_enabled()
                    and x.is_contiguous()):
                return None
            if onednn_ok and x.dtype == torch.float32:
                converted[0] = "mkldnn"
                return (x.to_mkldnn(),)
            converted[0] = "cl"
            return (x.contiguous(memory_format=torch.channels_last),)

        def post(_m: nn.Module, _inputs: tuple, out: Any, converted: list[Any] = converted) -> Any:
            kind, converted[0] = converted[0], None
            if kind == "mkldnn":
                return out.to_dense()
            if kind == "cl":
                return out.contiguous()
            return None

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def _explain(method: str, model: nn.Module, layer: nn.Module, images: torch.Tensor,
             targets: torch.Tensor, opts: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``cam.explain``, with a faster route for Grad-CAM giving bit-identical heatmaps.

    Grad-CAM needs ``d logits / d A`` at the CAM layer only, so the network BEFORE the layer need
    not be recorded for autograd. ``cam.explain_gradcam`` makes the input require grad (so it works
    for any model), which records the whole trunk: every op saves its inputs, and ``max_pool2d``
    then takes its slower with-indices kernel. Here the forward runs under ``no_grad`` and a hook
    on the layer swaps its output for a detached leaf that requires grad and turns grad mode on
    for the rest of the forward (the head after the layer). The same kernels compute the same
    values; the backward covers exactly the head, as before. Falls back to ``cam.explain`` when the
    registry's "gradcam" was replaced or the layer ran more than once in the forward.
    """
    from gridcam import cam

    fn = cam.METHODS.get(method)
    if method != "gradcam" or fn is not cam.explain_gradcam:
        return cam.explain(method, model, layer, images, targets, **opts)
    leaves: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            return None
        leaf = out.detach().requires_grad_(True)
        leaves.append(leaf)
        torch.set_grad_enabled(True)  # the head after the layer is recorded; restored below
        return leaf

    handles = [layer.register_forward_hook(hook), *_fast_max_pool(model)]
    try:
        with torch.inference_mode(False), torch.no_grad():  # exit restores the grad mode
            logits = model(images.detach())
    finally:
        for h in handles:
            h.remove()
    if len(leaves) != 1 or not logits.requires_grad:
        return cam.explain(method, model, layer, images, targets, **opts)
    with torch.enable_grad():
        heat = cam.grad_cam(logits, leaves[0], targets, variant=opts.get("variant", "elementwise"),
                            normalize=None)
    return heat.detach(), logits.detach()


def _process_batch(items: list[dict[str, Any]], model: nn.Module, layer: nn.Module,
                   methods: Sequence[str], opts: Mapping[str, Any], ev: Evaluation,
                   device: torch.device, sc: _Scoring) -> list[dict[str, Any]]:
    """Score one batch (list of items) into ``ev``; return its per-image records."""
    records: list[dict[str, Any]] = []
    good = []
    for it in items:
        if it.get("unreadable"):
            key = reason_key(it["reason"])
            ev.skipped_images[key] = ev.skipped_images.get(key, 0) + 1
            records.append({"image": it["path"], "index": it["index"], "done": True,
                            "skipped": key, "reason": it["reason"]})
        else:
            good.append(it)
    # The plan batches equal transformed sizes; split anyway in case a size was unknown/wrong.
    by_shape: dict[tuple[int, ...], list[dict[str, Any]]] = OrderedDict()
    for it in good:
        by_shape.setdefault(tuple(it["image"].shape), []).append(it)
    for group in by_shape.values():
        records.extend(_process_group(group, model, layer, methods, opts, ev, device, sc))
    return records


def _precompute(items: list[dict[str, Any]], model: nn.Module, layer: nn.Module,
                methods: Sequence[str], opts: Mapping[str, Any], device: torch.device,
                seed: int) -> list[dict[str, Any]]:
    """The model stage of the pipelined loop (runs in :func:`_prefetch`'s thread): explain every
    shape group of a batch, exactly as :func:`_process_batch` will group it, and attach the
    results to the group's first item as ``"_pre"`` (with the group's item identities, so
    :func:`_process_group` uses them only for that very group). Returns ``items``."""
    by_shape: dict[tuple[int, ...], list[dict[str, Any]]] = OrderedDict()
    for it in items:
        if not it.get("unreadable"):
            by_shape.setdefault(tuple(it["image"].shape), []).append(it)
    for group in by_shape.values():
        res = _forward_group(group, model, layer, methods, opts, device, seed)
        group[0]["_pre"] = ([id(it) for it in group], res)
    return items


def _process_group(items: list[dict[str, Any]], model: nn.Module, layer: nn.Module,
                   methods: Sequence[str], opts: Mapping[str, Any], ev: Evaluation,
                   device: torch.device, sc: _Scoring) -> list[dict[str, Any]]:
    """One forward (+ one batched backward) per method for images of one transformed size; all
    T target classes of each image are explained at once (targets padded to the largest T).
    The forward is skipped when the pipeline's model stage (:func:`_precompute`) already ran it."""
    pre = items[0].get("_pre")
    if pre is not None and pre[0] == [id(it) for it in items]:
        targets, counts, explained = pre[1]
    else:
        targets, counts, explained = _forward_group(items, model, layer, methods, opts, device,
                                                    sc.seed)
    return _score_group(items, targets, counts, explained, ev, device, sc)


def _forward_group(items: list[dict[str, Any]], model: nn.Module, layer: nn.Module,
                   methods: Sequence[str], opts: Mapping[str, Any], device: torch.device,
                   seed: int) -> tuple[torch.Tensor, list[int], dict[str, tuple[torch.Tensor,
                                                                                torch.Tensor]]]:
    """The model part of :func:`_process_group`: returns ``targets`` (B,T) long (padded with each
    image's first class), ``counts`` (each image's real T) and ``{method: (heat (B,T,h',w'),
    logits (B,C))}``."""
    B = len(items)
    # Inputs in the model's dtype (a float64 model makes results independent of the batch size:
    # its batch-size-dependent rounding is far below the float32 the heatmaps are computed in).
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    stacked = items[0].get("_stacked")
    if not (isinstance(stacked, torch.Tensor) and stacked.shape[0] == B
            and all(it.get("_stacked") is stacked for it in items)):
        stacked = torch.stack([it["image"] for it in items])  # not pre-stacked by the loader
    images = stacked.to(device, dtype, non_blocking=True)
    counts = [int(torch.as_tensor(it["classes"]).numel()) for it in items]
    T = max(1, max(counts))
    # Pad every image's targets to T with its first class (or 0); padded heatmaps are dropped.
    targets = torch.zeros((B, T), dtype=torch.long)
    for b, it in enumerate(items):
        cl = torch.as_tensor(it["classes"], dtype=torch.long).flatten()
        if cl.numel():
            targets[b, : cl.numel()] = cl
            targets[b, cl.numel():] = cl[0]
    targets = targets.to(device)
    micro = B
    if device.type == "cpu" and B > 1:
        prof = profile_model(model)
        if prof is not None and prof.activations > 0:
            micro = micro_batch_size(prof.activations, *images.shape[-2:])
    explained = {}
    for method in methods:
        mopts = dict(opts)
        if method == "smoothgrad" and "generator" not in mopts:
            # Noise seeded by the batch's first image: reproducible for a given batch plan.
            g = torch.Generator(device=device)
            g.manual_seed(spg_seed(seed + 1, int(items[0]["index"])))
            mopts["generator"] = g
        # SmoothGrad draws its noise for the whole batch at once: split, it would draw other noise
        m = B if "generator" in mopts else micro
        parts = [_explain(method, model, layer, images[i:i + m], targets[i:i + m], mopts)
                 for i in range(0, B, m)]
        explained[method] = (parts[0] if len(parts) == 1 else
                             (torch.cat([h for h, _ in parts]), torch.cat([lg for _, lg in parts])))
    return targets, counts, explained


@dataclass(frozen=True)
class ModelProfile:
    """Per input pixel, for one image: ``activations`` = values in the model's largest module
    output, ``macs`` = multiply-accumulates of its convolutions and linear layers. Convolutional
    networks scale with the input's pixels, so one probe size tells all. E.g. tiny_resnet: 4.0
    activations (16 channels at half resolution after the stem), ~1.6k MACs; resnet18: 16.0, ~36k.
    """

    activations: float
    macs: float


#: model -> its profile, None if it could not be probed (probed once per model and process)
_PROFILES: "weakref.WeakKeyDictionary[nn.Module, ModelProfile | None]" = weakref.WeakKeyDictionary()


def profile_model(model: nn.Module, size: tuple[int, int] = (224, 224)) -> ModelProfile | None:
    """:class:`ModelProfile` of ``model`` from one no-grad, eval-mode forward of a zero image of
    ``size`` (on the device and in the floating dtype of its parameters); cached per model. None
    when the model cannot run such an input (it is then used without these optimisations)."""
    if model in _PROFILES:
        return _PROFILES[model]
    largest, macs = [0], [0]

    def hook(m: nn.Module, _inp: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        largest[0] = max(largest[0], out.numel())  # a batch of one image
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            macs[0] += out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            macs[0] += out.numel() * m.in_features

    p0 = next((p for p in model.parameters() if p.is_floating_point()), None)
    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(m.children())]
    training = model.training
    prof: ModelProfile | None = None
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, 3, *size), dtype=p0.dtype if p0 is not None else torch.float32,
                              device=p0.device if p0 is not None else None))
        pixels = float(size[0] * size[1])
        prof = ModelProfile(activations=largest[0] / pixels, macs=macs[0] / pixels)
    except Exception:  # an input this model cannot take: no profile, no optimisation
        prof = None
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    _PROFILES[model] = prof
    return prof


def micro_batch_size(per_pixel: float, height: int, width: int, budget: int | None = None) -> int:
    """Images per model forward on CPU: as many as keep the largest activation (``per_pixel`` values
    per input pixel, :attr:`ModelProfile.activations`) within ``budget`` values (default
    :data:`CPU_ACTIVATION_BUDGET`), at least 1.

    On CPU a convolutional network is fastest when each layer's output stays cache-sized; past
    that, larger batches are slower per image. Measured on 2 cores (ms/image, Grad-CAM forward +
    head backward): tiny_resnet at 448 px 6.2 at 4 images vs 11.2 at 16; resnet18 at 224 px 20.0
    at 4 vs 25.4 at 16, at 448 px 84 at 1 vs 122 at 16; the best batch always had a largest
    activation of ~4.3 M values. Results equal a batched forward's up to float rounding (as any
    batch size does).
    """
    budget = CPU_ACTIVATION_BUDGET if budget is None else budget
    per_image = per_pixel * height * width
    return max(1, int(budget // per_image)) if per_image > 0 else 1


def _score_group(items: list[dict[str, Any]], targets: torch.Tensor, counts: list[int],
                 explained: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 ev: Evaluation, device: torch.device, sc: _Scoring) -> list[dict[str, Any]]:
    """The scoring part of :func:`_process_group` (heatmaps from :func:`_forward_group`)."""
    from gridcam import cam

    metrics, samples = sc.metrics, sc.samples
    B = len(items)
    methods = list(explained)
    uniforms = ([spg_uniforms(sc.seed, int(it["index"]), c, samples) for it, c in zip(items, counts)]
                if "spg" in metrics else None)
    # Images of equal ORIGINAL size are upsampled and scored together.
    by_size: dict[tuple[int, int], list[int]] = OrderedDict()
    for b, it in enumerate(items):
        if counts[b]:
            by_size.setdefault((int(it["size"][0]), int(it["size"][1])), []).append(b)

    records: list[dict[str, Any]] = []
    logits0 = None
    for method in methods:
        heat, logits = explained[method]
        if logits0 is None:
            logits0 = logits
        heat = heat.float()
        counts_m = ev.loc[method]
        for (H, W), members in by_size.items():
            pairs = [(b, t) for b in members for t in range(counts[b])]
            step = max(1, (_CPU_SCORE_PIXELS if heat.device.type == "cpu" else _MAX_PIXELS)
                       // (H * W))
            for k in range(0, len(pairs), step):
                chunk = pairs[k:k + step]
                bi = torch.tensor([b for b, _ in chunk], device=heat.device)
                ti = torch.tensor([t for _, t in chunk], device=heat.device)
                small = heat[bi, ti]  # (P,h',w')
                big = cam.upsample(small, (H, W))
                masks = torch.stack([items[b]["masks"][t] for b, t in chunk]).to(device)
                u = (torch.stack([uniforms[b][t] for b, t in chunk]).to(device)
                     if uniforms is not None else None)
                s = M.score_pairs(big, masks, uniforms=u, metrics=metrics, tolerance=sc.tolerance)
                classes = targets[bi, ti]
                valid = s.valid
                counts_m.update(
                    classes[valid],
                    s.pg_hit[valid] if s.pg_hit is not None else None,
                    s.spg_hits[valid] if s.spg_hits is not None else None,
                    s.ch[valid] if s.ch is not None else None)
                n_bad = int((~valid).sum())
                if n_bad:
                    counts_m.skip("zero heatmap", n_bad)
                records.extend(_pair_records(items, chunk, classes, method, s, samples))

    # Classification from the first method's forward (every method sees the same images).
    assert logits0 is not None
    if isinstance(ev.cls, M.MultiLabelCounts):
        labels = torch.stack([torch.as_tensor(it["label"], dtype=torch.float32) for it in items])
        pred = ev.cls.update(logits0, labels)
        cls_recs = [{"pred": torch.nonzero(pred[b]).flatten().tolist(),
                     "labels": _label_list(items[b]["label"])} for b in range(B)]
    else:
        # An image whose label is unknown (-1: its wnid is not a class) has no top-k score.
        labels = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
        known = (labels >= 0).nonzero().flatten()
        ok = ev.cls.update(logits0[known.to(logits0.device)], labels[known])
        cls_recs = [{"label": int(labels[b])} for b in range(B)]
        for j, b in enumerate(known.tolist()):
            cls_recs[b]["topk"] = ok[j].tolist()
    for b, it in enumerate(items):
        for cls_, reason in it.get("skipped", []) or []:
            key = reason_key(str(reason))
            ev.skip_pairs(key)
            records.append({"image": str(it["path"]), "index": int(it["index"]),
                            "class": cls_ if cls_ is None or isinstance(cls_, str) else int(cls_),
                            "skipped": key, "reason": str(reason)})
        ev.images += 1
        records.append({"image": str(it["path"]), "index": int(it["index"]), "done": True,
                        **cls_recs[b]})
    return records


def _pair_records(items: list[dict[str, Any]], chunk: list[tuple[int, int]], classes: torch.Tensor,
                  method: str, s: M.PairScores, samples: int) -> list[dict[str, Any]]:
    valid = s.valid.tolist()
    cls = classes.tolist()
    point = s.point.tolist() if s.point is not None else None
    pg = s.pg_hit.tolist() if s.pg_hit is not None else None
    spg = s.spg_hits.tolist() if s.spg_hits is not None else None
    ch = s.ch.tolist() if s.ch is not None else None
    out = []
    for j, (b, _t) in enumerate(chunk):
        rec: dict[str, Any] = {"image": str(items[b]["path"]), "index": int(items[b]["index"]),
                               "class": int(cls[j]), "method": method}
        if not valid[j]:
            rec["skipped"] = "zero heatmap"
        else:
            if pg is not None:
                rec["pg_hit"] = bool(pg[j])
                rec["point"] = point[j]
            if spg is not None:
                rec["spg"] = spg[j] / samples
            if ch is not None:
                rec["ch"] = ch[j]
        out.append(rec)
    return out


# ------------------------------------------------------------------------------------ output
def format_table(results: Mapping[str, Any], multilabel: bool) -> str:
    """Markdown table in the layout of the paper's README tables, one row per method."""
    cls = results["classification"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    if multilabel:
        head = ["Method", "F1-PerClass (%)", "F1-Overall (%)"]
        first = [f(cls.get("f1_per_class")), f(cls.get("f1_overall"))]
    else:
        head = ["Method", "Top-1 Acc (%)", "Top-5 Acc (%)"]
        first = [f(cls.get("top1")), f(cls.get("top5"))]
    head += ["Pointing Game", "Stochastic Pointing Game", "Content Heatmap", "Pairs", "Skipped"]
    rows = []
    for m, r in results["metrics"].items():
        rows.append([m, *first, f(r.get("pointing_game")), f(r.get("stochastic_pointing_game")),
                     f(r.get("content_heatmap")), str(r["evaluated"]), str(r["skipped"])])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


# ---------------------------------------------------------------------------------- the CLI
def _imagenet_classes(root: Path, classes_file: str | None) -> tuple[list[str], str]:
    """Class wnids in model order: ``--classes FILE``; else the sorted folders of ROOT/train (the
    data layer's rule, also Kaggle's layout / LOC_synset_mapping.txt); else, with a warning, the
    sorted wnids found in the val annotations."""
    from gridcam.data import imagenet as dimg

    if classes_file:
        return dimg.load_class_list(classes_file), f"--classes {classes_file}"
    _, base = dimg.resolve_val_dir(root)
    try:
        return dimg.load_class_list(None, base), f"the train folders under {base}"
    except GridcamError:
        pass
    _, records = dimg.build_val_index(root)
    wnids = sorted({o.name for r in records if r.objects for o in r.objects})
    if not wnids:
        raise GridcamError(f"{root}: no class list (--classes FILE), no train/ folder and no "
                           "object names in the val annotations")
    warnings.warn(f"no --classes file and no train/ folder under {base}: class indices are the "
                  f"positions of the {len(wnids)} wnids found in the val annotations (sorted), "
                  "which matches the model only if it was trained on exactly these classes",
                  stacklevel=2)
    return wnids, "the wnids found in the val annotations"


def _build_dataset(args: argparse.Namespace, num_classes: int):
    from gridcam import data

    transform = data.transforms.eval_transform(args.input_resize)
    root = Path(args.root)
    if not root.exists():
        raise GridcamError(f"{root}: no such directory")
    if args.dataset == "coco":
        ds = data.CocoLoc(str(root), split=args.split, transform=transform)
        source = f"the categories of {args.split}"
    else:
        classes, source = _imagenet_classes(root, args.classes)
        ds = data.ImageNetValLoc(str(root), classes, transform)
    if ds.num_classes != num_classes:
        fix = ("evaluate with the annotation file the model was trained with" if args.dataset == "coco"
               else "pass the model's class list with --classes FILE")
        raise GridcamError(
            f"the model has {num_classes} classes but the class list has {ds.num_classes} "
            f"({source}); {fix}")
    return ds


def main(args: argparse.Namespace) -> int:
    """Handler of ``gridcam evaluate imagenet|coco ROOT``."""
    from gridcam import models

    info = D.setup(args.device)
    if info.device.type == "cuda":
        # TF32 (on by default for cuDNN convolutions) perturbs heatmaps by ~1e-3 relative, enough
        # to move pointing-game points; evaluation numbers should not depend on the GPU model.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        if not args.checkpoint:
            raise GridcamError("--checkpoint PATH is required (the weights to evaluate; "
                               "the number of classes is read from it)")
        model, meta = models.create_from_checkpoint(
            args.checkpoint, arch=args.arch, pooling="max" if args.maxpool else None)
        num_classes = _model_classes(model)
        dataset = _build_dataset(args, num_classes)
        methods = _parse_list(args.methods, _method_names(), "explanation method")
        metrics = _parse_list(args.metrics, METRICS, "metric")
        config = {
            "dataset": args.dataset, "root": str(Path(args.root).resolve()),
            "checkpoint": str(Path(args.checkpoint).resolve()),
            "arch": args.arch or meta.get("arch"), "pooling": "max" if args.maxpool else
            meta.get("pooling", "avg"), "num_classes": num_classes,
            "input_resize": args.input_resize, "gradcam_variant": args.gradcam_variant,
        }
        if args.dataset == "coco":
            config["split"] = args.split
        results = evaluate(
            model, dataset, methods=methods, metrics=metrics,
            method_options={"variant": args.gradcam_variant}, tolerance=args.tolerance,
            spg_samples=args.spg_samples, seed=args.seed, batch_size=args.batch_size,
            workers=args.workers, limit=args.limit, input_resize=args.input_resize,
            multilabel=args.dataset == "coco", num_classes=num_classes,
            per_image=args.per_image, device=info.device,
            progress=not getattr(args, "quiet", False), config=config)
        if info.is_main:
            atomic_write_json(args.output, results)
            print(format_table(results, multilabel=args.dataset == "coco"))
            _print_skips(results)
            print(f"results written to {args.output}")
    finally:
        D.cleanup()
    return 0


def _method_names() -> list[str]:
    from gridcam import cam

    return list(cam.METHODS)


def _print_skips(results: Mapping[str, Any]) -> None:
    im = results["images"]
    skipped = "".join(f", {v} skipped ({k})" for k, v in im["skipped_reasons"].items())
    print(f"images: {im['evaluated']} evaluated ({im['resumed']} read back from the per-image "
          f"file){skipped}, in {im['seconds']:.1f} s")
    for m, r in results["metrics"].items():
        if r["skipped_reasons"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in r["skipped_reasons"].items())
            print(f"{m}: {r['skipped']} pairs skipped ({reasons})")
