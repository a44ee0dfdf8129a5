"""The input pipeline of an evaluation: the batch plan, loader threads, prefetch, the model thread.

Machinery that only makes the pass fast; the numbers do not depend on it.

1. Images whose transformed size (shorter side ``input_resize``, no crop) is equal are batched
   together: the size is known from the dataset's ``.sizes`` without decoding, so a batch plan is
   made up front (:func:`plan_batches`). The plan is the same on every rank and batches are dealt
   round-robin, so a batch contains the same images whatever the world size.
2. The loader decodes the images and builds the masks at the original resolution (data layer), in
   ``workers`` DataLoader worker processes or, with ``workers=0``, in background threads of the
   main process (PIL and numpy release the GIL, so loading overlaps the model without any
   inter-process copies; the faster choice on 2 CPU cores), see :func:`load_batches`.
3. On a CPU host with <= 2 intra-op threads the model then runs in a thread of its own, one batch
   ahead of the main thread's scoring (:func:`model_ahead`): three stages that keep 2 cores busy.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from gridcam.evaluation.forward import MODEL_BOUND_MACS_PER_PIXEL, profile_model
from gridcam.errors import GridcamError
from gridcam.problems import Problem

__all__ = ["Items", "load_batches", "materialize", "model_ahead", "plan_batches", "prefetch",
           "prestack", "thread_loader", "transformed_keys"]

#: Pipelined model stage (see :func:`model_ahead`) on CPU hosts with at most this many intra-op
#: threads; measured on 2 cores only, so larger hosts keep the two-stage loop.
_PIPELINE_MAX_THREADS = 2


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


def transformed_keys(dataset: Any, input_resize: int | None) -> list[Any]:
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


class Items(torch.utils.data.Dataset):
    """Wraps a localisation dataset for the evaluator's loader (also in worker processes).

    Item ``i`` comes from :func:`gridcam.data.load_item`, which reports nothing: the problems
    travel with the items and the main process reports them (once, counted). An image the dataset
    cannot give becomes ``{"index", "unreadable": True, "problem": Problem, "path"}`` so the
    evaluator can count it and mark it done for resumption; a usable item gets its ``"index"``
    (the position ``i``) and its ``"key"`` (:func:`gridcam.data.image_key`, which seeds its SPG).
    """

    def __init__(self, base: Any):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from gridcam import data

        item = data.load_item(self.base, i)
        if isinstance(item, Problem):
            return {"index": i, "unreadable": True, "problem": item,
                    "path": data.image_path(self.base, i) or item.file}
        item = dict(item)
        item["index"] = i  # the position in the batch plan (the base's own index under a Subset)
        item.setdefault("key", data.image_key(self.base, i))
        return item


def _collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No stacking: the evaluator groups items by size itself."""
    return list(items)


def materialize(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy the tensors a worker sent (shared memory) into this process's own memory.

    The first touch of a shared-memory page costs a page fault; for a batch of float32 images that
    made ``torch.stack`` in the main loop take longer than the model's forward. Done in
    :func:`prefetch`'s thread (the copies release the GIL), the faults overlap the compute.
    """
    out = []
    for it in items:
        it = dict(it)
        for key in ("image", "masks"):
            if isinstance(it.get(key), torch.Tensor):
                it[key] = it[key].clone()
        out.append(it)
    return out


def prestack(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stack the images of each shape group once, in the loader thread (off the model's thread).

    Every readable item gets ``"_stacked"`` (its group's (B,3,h,w) tensor, shared) and its
    ``"image"`` becomes a view into it; :func:`gridcam.evaluation.forward.forward_group` uses the
    stacked tensor as is when its group is exactly that one (groups are formed the same way, in
    item order).
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


def thread_loader(source: torch.utils.data.Dataset, batches: Sequence[Sequence[int]],
                   threads: int = 2, depth: int = 2) -> Iterator[list[dict[str, Any]]]:
    """``-j 0``: load the batches' items in background threads of this process, in plan order.

    Decoding, resizing (PIL) and building masks (torch) release the GIL, so loading overlaps the
    model and the scoring without copying images between processes (which cost more than it
    saved on 2 cores). Up to ``depth`` batches are in flight; each batch's items are loaded in
    parallel, then stacked (:func:`prestack`) by a job queued after them (FIFO: its items are
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
            pending.append(pool.submit(lambda fs=futures: prestack([f.result() for f in fs])))

    try:
        for _ in range(depth):
            submit()
        while pending:
            items = pending.popleft().result()
            submit()
            yield items
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prefetch(iterable: Iterable[Any], fn: Any, depth: int = 2,
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


def load_batches(dataset: Any, batches: Sequence[Sequence[int]],
                 workers: int) -> Iterator[list[dict[str, Any]]]:
    """The items of ``batches`` (lists of dataset indices), batch by batch in plan order, images
    of each shape group pre-stacked (:func:`prestack`): ``workers`` DataLoader processes, or with
    0 loader threads of this process (:func:`thread_loader`)."""
    source = Items(dataset)
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            source, batch_sampler=batches, num_workers=workers,
            # No pin_memory: stacking pinned tensors allocates page-locked memory for every batch,
            # which cost more than the plain host-to-device copies it would speed up.
            collate_fn=_collate_items, pin_memory=False)
        # A thread copies the workers' shared-memory tensors (see materialize) and stacks.
        return prefetch(loader, lambda x: prestack(materialize(x)))
    return thread_loader(source, batches)


@contextmanager
def model_ahead(batches: Iterator[list[dict[str, Any]]], model: nn.Module, device: torch.device,
                forward: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
                ) -> Iterator[Iterator[list[dict[str, Any]]]]:
    """Yield the batches to score: on small CPU hosts with ``forward`` (the model stage,
    :func:`gridcam.evaluation.forward.precompute`) already applied, one batch ahead, in a thread.

    Small CPU hosts: a three-stage pipeline. The model runs in its own thread one batch ahead of
    the main thread's scoring (one intra-op thread: its ops are small and an idle OpenMP team
    would spin), while the loader threads decode the next batches at a lower priority. The model
    stage gets one intra-op thread when the stages are of a size (a light model: 2 cores stay
    busy without an OpenMP team whose barrier spins whenever another stage holds a core), all of
    them when it dominates. On 2 cores, interleaved runs: tiny_resnet (1.6k MACs/pixel) 245 vs
    227 img/s with 1 vs 2 threads at 224 px, 79 vs 73 at 448 px; resnet18 (36k MACs/pixel)
    25 vs 37 img/s at 224 px. On exit the loader/prefetch threads are stopped (also when the loop
    ended early) and the main thread's intra-op thread count is restored.
    """
    threads0 = torch.get_num_threads()
    pipeline = device.type == "cpu" and threads0 <= _PIPELINE_MAX_THREADS
    if pipeline:
        prof = profile_model(model)
        heavy = prof is not None and prof.macs > MODEL_BOUND_MACS_PER_PIXEL
        torch.set_num_threads(1)
        batches = prefetch(batches, forward, depth=1,
                           threads=threads0 if heavy else max(1, threads0 - 1))
    try:
        yield batches
    finally:
        if hasattr(batches, "close"):
            batches.close()  # stops the prefetch thread if the loop ended early
        if pipeline:
            torch.set_num_threads(threads0)
