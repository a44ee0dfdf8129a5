"""Beyond localisation, in the same pass: deletion, insertion, Focus and the randomisation test.

For each shape group the evaluation has explained (:func:`gridcam.evaluation.forward.forward_group`:
targets (B,T), counts, ``{method: (heat, logits)}``), :func:`group_extras` computes, per method and
(image b, target t) pair, the record fields of the metrics asked (docs/metrics.md):

- ``deletion`` / ``insertion``: the area under the class-probability curve as the pixels are
  removed / added in the heatmap's order (:func:`gridcam.metrics.perturbation_curves`; the
  heatmap resized bilinearly to the model's input); the curve's points, rounded to 6 decimals, as
  ``deletion_curve`` / ``insertion_curve``. Every method's pairs go through one stream of
  perturbed batches, the original and baseline images once per image.
- ``focus``: a 2x2 mosaic (:func:`gridcam.grid.compose`) of the image, another image of the class
  and two without it (:class:`MosaicSource` loads them with the item, in the loader); the method
  explains the class on the mosaic (one batched :func:`~gridcam.evaluation.forward.forward_group`)
  and :func:`gridcam.metrics.focus` scores the map resized to the mosaic. ``focus_images``: the
  dataset indices of the four cells (TL, TR, BL, BR).
- ``randomisation``: Spearman's rho between the method's map on the model and on a copy whose
  classifier and last block are re-initialised (:func:`randomised_copy`), both at the input size.

A metric that cannot score a pair says why in ``<metric>_skipped`` (:data:`SKIPS`); pairs whose
heatmap is zero are skipped for every metric by the scoring, as for PG/SPG/CH. Everything is
seeded by (``--seed``, the image's key), so ranks, resumption and batching give the same numbers
(for a given ``-b``, as the random methods).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from gridcam import metrics as M
from gridcam.data.identity import key_seed
from gridcam.errors import GridcamError
from gridcam.evaluation import forward as F
from gridcam.evaluation.totals import BEYOND

__all__ = ["FALLBACK", "SKIPS", "MosaicSource", "Settings", "group_extras", "precompute",
           "randomised_copy", "settings"]

#: Reason codes of pairs one of these metrics leaves out (besides ``zero_heatmap``).
SKIPS = {
    "no_focus_partner": "Focus: no other readable image of the class, or fewer than two without "
                        "it: pair left out of Focus",
    "constant_heatmap": "randomisation: the map on the model or on the re-initialised copy is "
                        "constant (no ranks to correlate): pair left out of the randomisation test",
}
#: Focus: spare candidates drawn per role, used in turn when a chosen image cannot be read.
FALLBACK = 2
#: Decimals of the curve points kept in the per-image records (the AUC is kept exactly).
CURVE_DECIMALS = 6
#: Default perturbed images per forward on GPUs (on CPU: the cache-sized micro-batch).
GPU_BATCH = 64

Fields = dict[str, Any]
#: {method: (heat (B,T,h',w'), logits (B,C))} of one shape group
Maps = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
#: {method: {(b, t): record fields}}
Extras = dict[str, dict[tuple[int, int], Fields]]


@dataclass(frozen=True)
class Settings:
    """What the beyond-localisation metrics of one evaluation need.

    metrics: the subset of :data:`gridcam.evaluation.totals.BEYOND` asked. steps: curve steps;
    deletion_baseline / insertion_baseline: baseline names; batch: perturbed images per forward
    (None: automatic). model/layer/methods/opts/device/seed: as the evaluation's. randomised:
    (model copy, its CAM layer) for the randomisation test, else None.
    """

    metrics: tuple[str, ...]
    steps: int
    deletion_baseline: str
    insertion_baseline: str
    batch: int | None
    model: nn.Module
    layer: nn.Module
    methods: tuple[str, ...]
    opts: Mapping[str, Any]
    device: torch.device
    seed: int
    randomised: tuple[nn.Module, nn.Module] | None = None


def settings(metrics: Sequence[str], *, steps: int, deletion_baseline: str, insertion_baseline: str,
             batch: int | None, model: nn.Module, layer: nn.Module, methods: Sequence[str],
             opts: Mapping[str, Any], device: torch.device, seed: int) -> Settings | None:
    """The :class:`Settings` of the beyond-localisation metrics among ``metrics`` (None if none),
    checked (one-line GridcamError), with the re-initialised copy made when asked."""
    asked = tuple(m for m in metrics if m in BEYOND)
    if not asked:
        return None
    if steps < 1:
        raise GridcamError(f"--faithfulness-steps must be >= 1, got {steps}")
    if batch is not None and batch < 1:
        raise GridcamError(f"--faithfulness-batch must be >= 1, got {batch}")
    for flag, kind in (("--deletion-baseline", deletion_baseline),
                       ("--insertion-baseline", insertion_baseline)):
        if kind not in M.BASELINES:
            raise GridcamError(f"{flag} {kind!r}: choose from {', '.join(M.BASELINES)}")
    randomised = (randomised_copy(model, layer, seed, device)[:2]
                  if "randomisation" in asked else None)
    return Settings(asked, int(steps), deletion_baseline, insertion_baseline, batch, model, layer,
                    tuple(methods), dict(opts), device, int(seed), randomised)


def recorded(s: Settings | None) -> dict[str, Any]:
    """The settings a per-image file must have been written with (only the metrics asked)."""
    if s is None:
        return {}
    out: dict[str, Any] = {}
    if "deletion" in s.metrics or "insertion" in s.metrics:
        out["faithfulness_steps"] = s.steps
    if "deletion" in s.metrics:
        out["deletion_baseline"] = s.deletion_baseline
    if "insertion" in s.metrics:
        out["insertion_baseline"] = s.insertion_baseline
    if s.randomised is not None:
        out["randomised_modules"] = randomised_modules(s.model, s.layer)
    return out


# ------------------------------------------------------------------------------ randomisation
def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise GridcamError(f"the CAM layer ({type(module).__name__}) is not a module of the model; "
                       "the randomisation test cannot find it in a copy")


def randomised_modules(model: nn.Module, layer: nn.Module) -> list[str]:
    """Names of the modules :func:`randomised_copy` re-initialises: the classifier (the last
    ``nn.Linear``) and the last block. The last block is the deepest element of a
    Sequential/ModuleList that contains the CAM layer (``blocks.11`` for a ViT whose CAM layer is
    ``blocks.11.norm1``); when no list contains it, the CAM layer's last child with parameters
    (``layer4.1`` of a ResNet), or the CAM layer itself."""
    names = dict(model.named_modules())
    linear = [n for n, m in names.items() if isinstance(m, nn.Linear)]
    if not linear:
        raise GridcamError("--metrics randomisation: the model has no classifier (nn.Linear) to "
                           "re-initialise")
    cam = _module_name(model, layer)
    block = None
    parts = cam.split(".") if cam else []
    for k in range(len(parts), 0, -1):  # deepest first: an element of a list containing the layer
        parent = names[".".join(parts[:k - 1])] if k > 1 else model
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            block = ".".join(parts[:k])
            break
    if block is None:
        kids = [f"{cam}.{n}" if cam else n for n, c in layer.named_children()
                if any(True for _ in c.parameters())]
        block = kids[-1] if kids else cam
    out = [block] if block else []
    head = linear[-1]
    if not (block and (head == block or head.startswith(f"{block}."))):
        out.append(head)
    return out


def randomised_copy(model: nn.Module, layer: nn.Module, seed: int,
                    device: torch.device | None = None) -> tuple[nn.Module, nn.Module, list[str]]:
    """A copy of ``model`` (eval mode, on ``device``) with :func:`randomised_modules` re-initialised
    by their ``reset_parameters`` (convolutions, linear and norm layers; batch norm's running
    statistics reset too), from torch's CPU generator seeded by ``seed`` (and restored after), so the copy is the same on
    every device and rank. Returns (copy, its CAM layer, the names re-initialised). The model is
    not changed."""
    names = randomised_modules(model, layer)
    cam = _module_name(model, layer)
    dev = device if device is not None else next(model.parameters()).device
    twin = copy.deepcopy(model).cpu()
    mods = dict(twin.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key_seed(seed, "randomisation"))
        for name in names:
            for m in mods[name].modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):  # batch norm: its running statistics too
                    reset()
    twin = twin.to(dev).eval()
    return twin, dict(twin.named_modules())[cam], names


# -------------------------------------------------------------------------------- Focus data
class MosaicSource(torch.utils.data.Dataset):
    """The evaluation's dataset with, on every item, what its Focus mosaics need.

    Item ``i`` is ``base``'s, plus ``"focus"``: per target class t (the item's ``classes``) either
    ``{"others": (3,C,h,w) images in cell order, "quadrant": q, "partner": s, "members": [4
    dataset indices TL, TR, BL, BR]}`` (the item goes to cell q; ``others[s]`` is the other image of
    the class; :func:`gridcam.grid.compose` fills the free cells in order) or ``{"skip": code}``.
    The other images are another image of class t and two without it, drawn from the whole
    dataset (not only ``--limit``) with a generator seeded by (seed, the item's key, t); the
    class of every image comes from the annotations (``presence_matrix()``, no decoding). Each
    is resized bilinearly (antialiased) to the item's transformed size. A chosen image that
    cannot be read is replaced by the next spare (:data:`FALLBACK` per role).
    """

    def __init__(self, base: Any, seed: int):
        self.base = base
        self.seed = int(seed)
        presence = _presence(base)  # (N, C) bool, kept as sparse lists (ImageNet: 50k x 1000)
        rows, cols = np.nonzero(presence)
        self.num_classes = presence.shape[1]
        # the classes of image i: image_classes[ptr[i]:ptr[i+1]];
        # the images of class c: class_images[cptr[c]:cptr[c+1]]
        self.ptr = np.concatenate([[0], np.cumsum(presence.sum(axis=1))]).astype(np.int64)
        self.image_classes = cols.astype(np.int64)
        order = np.argsort(cols, kind="stable")
        self.cptr = np.concatenate([[0], np.cumsum(presence.sum(axis=0))]).astype(np.int64)
        self.class_images = rows[order].astype(np.int64)
        self.usable = np.flatnonzero(np.diff(self.ptr) > 0)  # images with a class

    def __len__(self) -> int:
        return len(self.base)

    def image_key(self, index: int) -> str:
        from gridcam import data

        return data.image_key(self.base, index)

    def image_path(self, index: int) -> str | None:
        from gridcam import data

        return data.image_path(self.base, index)

    def members(self, cls: int) -> np.ndarray:
        """Indices of the images of class ``cls`` (sorted)."""
        return self.class_images[self.cptr[cls]:self.cptr[cls + 1]]

    def has(self, index: int, cls: int) -> bool:
        """Whether image ``index`` shows class ``cls``."""
        return bool((self.image_classes[self.ptr[index]:self.ptr[index + 1]] == cls).any())

    def plan(self, index: int, key: str, cls: int) -> tuple[int, list[int], list[int], list[int]]:
        """(quadrant, order of [partner, negative, negative] in the free cells, partner
        candidates, negative candidates), drawn from (seed, key, cls)."""
        g = torch.Generator().manual_seed(key_seed(self.seed, f"{key}\x00focus\x00{cls}"))
        quadrant = int(torch.randint(4, (1,), generator=g))
        order = torch.randperm(3, generator=g).tolist()
        same = self.members(cls) if 0 <= cls < self.num_classes else np.zeros(0, np.int64)
        n_other = len(self.usable) - len(same)
        same = same[same != index]
        partners = [int(same[k]) for k in _distinct(len(same), 1 + FALLBACK, g)]
        others: list[int] = []
        if 0 < n_other * 8 < len(self.usable):  # rare negatives: enumerate them
            pool = np.setdiff1d(self.usable, self.members(cls), assume_unique=True)
            others = [int(pool[k]) for k in _distinct(len(pool), 2 + FALLBACK, g)]
        elif n_other:  # draw from all usable images, rejecting those of the class
            while len(others) < min(2 + FALLBACK, n_other):
                j = int(self.usable[int(torch.randint(len(self.usable), (1,), generator=g))])
                if not self.has(j, cls) and j not in others:
                    others.append(j)
        return quadrant, order, partners, others

    def load(self, index: int) -> Any:
        from gridcam import data

        item = data.load_item(self.base, index)
        if not isinstance(item, dict):
            return item
        item = dict(item)
        key = str(item.get("key", self.image_key(index)))
        size = tuple(item["image"].shape[-2:])
        item["focus"] = [self._mosaic(index, key, int(t), size)
                         for t in torch.as_tensor(item["classes"]).flatten().tolist()]
        return item

    def __getitem__(self, index: int) -> Any:
        return self.load(index)

    def _mosaic(self, index: int, key: str, cls: int, size: tuple[int, int]) -> dict[str, Any]:
        quadrant, order, partners, others = self.plan(index, key, cls)
        partner = self._first_readable(partners, 1, size)
        negatives = self._first_readable(others, 2, size)
        if partner is None or negatives is None:
            return {"skip": "no_focus_partner"}
        chosen = [partner[0], *negatives]  # [(index, image)]: partner, negative, negative
        cells = [chosen[k] for k in order]
        members = [j for j, _ in cells]
        members.insert(quadrant, index)
        return {"others": torch.stack([im for _, im in cells]), "quadrant": quadrant,
                "partner": order.index(0), "members": members}

    def _first_readable(self, candidates: list[int], need: int,
                        size: tuple[int, int]) -> list[tuple[int, torch.Tensor]] | None:
        from gridcam import data

        got: list[tuple[int, torch.Tensor]] = []
        for j in candidates:
            it = data.load_item(self.base, j)
            if isinstance(it, dict) and isinstance(it.get("image"), torch.Tensor):
                got.append((j, _resized(it["image"], size)))
                if len(got) == need:
                    return got
        return None


def _distinct(n: int, k: int, g: torch.Generator) -> list[int]:
    """Up to ``k`` distinct integers in [0, n), uniform without replacement, drawn from ``g``."""
    out: list[int] = []
    while len(out) < min(k, n):
        r = int(torch.randint(n, (1,), generator=g))
        if r not in out:
            out.append(r)
    return out


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C,h,w) -> (C,*size), bilinear and antialiased (unchanged when already that size)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return Fn.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                          antialias=True)[0].to(image.dtype)


def _presence(dataset: Any) -> np.ndarray:
    """(len(dataset), C) bool class presence from the annotations, through ``Subset``s."""
    indices = None
    base = dataset
    while isinstance(base, torch.utils.data.Subset):
        idx = np.asarray(base.indices, dtype=np.int64)
        indices = idx if indices is None else idx[indices]
        base = base.dataset
    fn = getattr(base, "presence_matrix", None)
    if not callable(fn):
        raise GridcamError(f"--metrics focus needs every image's classes without decoding it "
                           f"(a dataset with presence_matrix(), as ImageNetValLoc and CocoLoc); "
                           f"{type(base).__name__} has none")
    m = np.asarray(fn(), dtype=bool)
    return m if indices is None else m[indices]


# ---------------------------------------------------------------------------------- scoring
def precompute(s: Settings, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model stage's part (in the prefetch thread, after
    :func:`gridcam.evaluation.forward.precompute`): the extras of every shape group, attached to
    the group's first item as ``"_beyond"`` with the group's identities. Returns ``items``."""
    for group in F.group_by_shape(items):
        targets, counts, explained = F.explained_group(group, s.model, s.layer, s.methods, s.opts,
                                                       s.device, s.seed)
        group[0]["_beyond"] = ([id(it) for it in group], _compute(s, group, targets, counts, explained))
    return items


def group_extras(s: Settings, items: list[dict[str, Any]], targets: torch.Tensor, counts: list[int],
                 explained: Maps) -> Extras:
    """``{method: {(b, t): record fields}}`` of one shape group (unless :func:`precompute` already
    made them for this very group)."""
    pre = items[0].get("_beyond")
    if pre is not None and pre[0] == [id(it) for it in items]:
        return pre[1]
    return _compute(s, items, targets, counts, explained)


def _compute(s: Settings, items: list[dict[str, Any]], targets: torch.Tensor, counts: list[int],
             explained: Maps) -> Extras:
    pairs = [(b, t) for b in range(len(items)) for t in range(counts[b])]
    out: Extras = {m: {p: {} for p in pairs} for m in explained}
    if not pairs:
        return out
    images = F._stacked_images(items, s.model, s.device)
    if "deletion" in s.metrics or "insertion" in s.metrics:
        _faithfulness(s, images, targets, pairs, explained, out)
    if "focus" in s.metrics:
        _focus(s, items, images, targets, pairs, out)
    if "randomisation" in s.metrics:
        _randomisation(s, items, pairs, explained, out)
    return out


def _pair_heat(heat: torch.Tensor, pairs: list[tuple[int, int]], size: tuple[int, int]) -> torch.Tensor:
    """(P,*size) float32: the pairs' heatmaps of (B,T,h',w') ``heat`` resized bilinearly."""
    from gridcam import cam

    bi = torch.tensor([b for b, _ in pairs], device=heat.device)
    ti = torch.tensor([t for _, t in pairs], device=heat.device)
    return cam.upsample(heat[bi, ti].float(), size)


def _batch(s: Settings, images: torch.Tensor) -> int:
    if s.batch is not None:
        return s.batch
    if s.device.type != "cpu":
        return GPU_BATCH
    prof = F.profile_model(s.model)
    if prof is None or prof.activations <= 0:
        return 1
    return F.micro_batch_size(prof.activations, *images.shape[-2:])


def _faithfulness(s: Settings, images: torch.Tensor, targets: torch.Tensor,
                  pairs: list[tuple[int, int]], explained: Maps,
                  out: Extras) -> None:
    """Deletion/insertion of every method's pairs in one stream of perturbed batches."""
    size = tuple(images.shape[-2:])
    methods = list(explained)
    heat = torch.cat([_pair_heat(explained[m][0], pairs, size) for m in methods])  # (M*P,h,w)
    bi = torch.tensor([b for b, _ in pairs] * len(methods))
    classes = torch.tensor([int(targets[b, t]) for b, t in pairs] * len(methods))
    handles = F.fast_max_pool(s.model)

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return s.model(x)

    try:
        curves = M.perturbation_curves(
            logits, images, heat, bi, classes, steps=s.steps,
            deletion=s.deletion_baseline if "deletion" in s.metrics else None,
            insertion=s.insertion_baseline if "insertion" in s.metrics else None,
            batch=_batch(s, images))
    finally:
        for h in handles:
            h.remove()
    P = len(pairs)
    for name, curve in (("deletion", curves.deletion), ("insertion", curves.insertion)):
        if curve is None:
            continue
        auc = M.curve_auc(curve).tolist()
        points = curve.tolist()
        for k, m in enumerate(methods):
            for j, p in enumerate(pairs):
                out[m][p][name] = auc[k * P + j]
                out[m][p][f"{name}_curve"] = [round(v, CURVE_DECIMALS) for v in points[k * P + j]]


def _focus(s: Settings, items: list[dict[str, Any]], images: torch.Tensor, targets: torch.Tensor,
           pairs: list[tuple[int, int]], out: Extras) -> None:
    """Focus of every method on each pair's mosaic (mosaics explained in groups of about the
    evaluation batch's pixels: a quarter as many mosaics as images)."""
    from gridcam import cam, grid

    plans = []
    for b, t in pairs:
        plan = (items[b].get("focus") or [None] * (t + 1))[t]
        if plan is None:
            raise GridcamError("--metrics focus: the items carry no mosaic plan (the dataset was "
                               "not wrapped in beyond.MosaicSource)")
        if "skip" in plan:
            for m in out:
                out[m][(b, t)]["focus_skipped"] = plan["skip"]
        else:
            plans.append((b, t, plan))
    step = max(1, len(items) // 4)
    h, w = images.shape[-2:]
    for k in range(0, len(plans), step):
        chunk = plans[k:k + step]
        x = images[torch.tensor([b for b, _, _ in chunk], device=images.device)]
        others = torch.stack([p["others"] for _, _, p in chunk]).to(images.device, images.dtype)
        q = torch.tensor([p["quadrant"] for _, _, p in chunk], device=images.device)
        mosaics = grid.compose(x, others, q)  # (n,C,2h,2w)
        flags = torch.zeros((len(chunk), 3, 1, 1, 1))
        flags[torch.arange(len(chunk)), torch.tensor([p["partner"] for _, _, p in chunk])] = 1.0
        cells = grid.compose(torch.ones((len(chunk), 1, 1, 1)), flags, q.cpu())[:, 0] > 0  # (n,2,2)
        fake = [{"image": mosaics[i], "classes": targets[b, t].reshape(1).cpu(), "key": items[b]["key"]}
                for i, (b, t, _) in enumerate(chunk)]
        _, _, explained = F.forward_group(fake, s.model, s.layer, s.methods, s.opts, s.device, s.seed)
        for m, (heat, _logits) in explained.items():
            scores = M.focus(cam.upsample(heat[:, 0].float(), (2 * h, 2 * w)), cells).tolist()
            for (b, t, plan), v in zip(chunk, scores):
                if v != v:  # NaN: no positive relevance on the mosaic
                    out[m][(b, t)]["focus_skipped"] = "zero_heatmap"
                else:
                    out[m][(b, t)].update(focus=v, focus_images=list(plan["members"]))


def _randomisation(s: Settings, items: list[dict[str, Any]], pairs: list[tuple[int, int]],
                   explained: Maps, out: Extras) -> None:
    """Spearman's rho between each method's maps on the model and on the re-initialised copy."""
    assert s.randomised is not None
    twin, twin_layer = s.randomised
    _, _, other = F.forward_group(items, twin, twin_layer, s.methods, s.opts, s.device, s.seed)
    size = tuple(items[0]["image"].shape[-2:])
    for m, (heat, _logits) in explained.items():
        rho = M.spearman(_pair_heat(heat, pairs, size), _pair_heat(other[m][0], pairs, size)).tolist()
        for p, v in zip(pairs, rho):
            if v != v:
                out[m][p]["randomisation_skipped"] = "constant_heatmap"
            else:
                out[m][p]["randomisation"] = v
