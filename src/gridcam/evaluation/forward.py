"""The model stage of an evaluation: explain a group of equal-size images, fast and bit-exact.

One forward (+ one batched backward) per method for images of one transformed size; all T target
classes of each image are explained at once (targets padded to the largest T). What only makes it
fast, with heatmaps bit-identical to ``cam.explain`` (for the same intra-op thread count):

- Grad-CAM's trunk before the CAM layer runs without autograd (only ``d logits / d A`` is
  needed), see :func:`explain`;
- max-pool layers run on oneDNN (exact, :func:`fast_max_pool`);
- on CPU a batch goes through the model in micro-batches sized to keep activations cache-sized
  (:func:`micro_batch_size` from the model's :func:`profile_model`: resnet18 at 448 px one image at
  a time, tiny_resnet at 224 px 16).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gridcam.data.identity import key_seed

__all__ = ["CPU_ACTIVATION_BUDGET", "MODEL_BOUND_MACS_PER_PIXEL", "ModelProfile", "explain",
           "explained_group", "fast_max_pool", "forward_group", "group_by_shape",
           "micro_batch_size", "precompute", "profile_model"]

#: CPU: the model runs a batch in micro-batches whose largest activation (module output) holds at
#: most this many values (~17 MB float32), see :func:`micro_batch_size`.
CPU_ACTIVATION_BUDGET = 4_500_000
#: Small CPU hosts: a model above this many MACs per input pixel gets all intra-op threads in the
#: pipelined model stage, a lighter one a single thread (see
#: :func:`gridcam.evaluation.pipeline.model_ahead`).
MODEL_BOUND_MACS_PER_PIXEL = 5000.0

#: Explanations of one group: targets (B,T), each image's real T, {method: (heat, logits)}.
Explained = tuple[torch.Tensor, list[int], dict[str, tuple[torch.Tensor, torch.Tensor]]]


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



#: oneDNN pooling available (PyTorch CPU builds normally have it).
_MKLDNN = bool(torch.backends.mkldnn.is_available())


def fast_max_pool(model: nn.Module) -> list[Any]:
    """Hooks making the model's ``nn.MaxPool2d`` layers run in channels-last on CPU without grad.

    PyTorch's CPU max-pool kernel for contiguous (NCHW) input is slow: for ResNet's stem pool it
    took as long as all the convolutions of tiny_resnet. The channels-last kernel is ~7x faster,
    and oneDNN's (float32, no dilation: the input is reordered to an ``mkldnn`` tensor and the
    result back) another ~2x (2.2 vs 4.4 ms for a (16,16,112,149) batch on 2 cores). A maximum is
    exact, so pooling a converted copy and converting the result back gives bit-identical values,
    and the layers after it see the same NCHW tensor as before. Only while
    grad is off (the trunk before the CAM layer, see :func:`explain`): with grad, the pool's
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


def explain(method: str, model: nn.Module, layer: nn.Module, images: torch.Tensor,
            targets: torch.Tensor, opts: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``cam.explain``, with Grad-CAM's max-pool layers on oneDNN (exact, faster on CPU, see
    :func:`fast_max_pool`). Grad-CAM itself already records only the head after the CAM layer
    (``cam.explain_gradcam``), so its trunk runs without autograd and max-pool may take the
    without-indices kernel."""
    from gridcam import cam

    if method != "gradcam" or cam.METHODS.get(method) is not cam.explain_gradcam:
        return cam.explain(method, model, layer, images, targets, **opts)
    handles = fast_max_pool(model)
    try:
        return cam.explain(method, model, layer, images, targets, **opts)
    finally:
        for h in handles:
            h.remove()



def group_by_shape(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The readable items of a batch grouped by image shape (in item order). The plan batches
    equal transformed sizes; this splits anyway in case a size was unknown or wrong."""
    by_shape: dict[tuple[int, ...], list[dict[str, Any]]] = OrderedDict()
    for it in items:
        if not it.get("unreadable"):
            by_shape.setdefault(tuple(it["image"].shape), []).append(it)
    return list(by_shape.values())


def precompute(items: list[dict[str, Any]], model: nn.Module, layer: nn.Module,
               methods: Sequence[str], opts: Mapping[str, Any], device: torch.device,
               seed: int) -> list[dict[str, Any]]:
    """The model stage of the pipelined loop (runs in the prefetch thread): explain every shape
    group of a batch, exactly as the loop will group it (:func:`group_by_shape`), and attach the
    results to the group's first item as ``"_pre"`` (with the group's item identities, so
    :func:`explained_group` uses them only for that very group). Returns ``items``."""
    for group in group_by_shape(items):
        res = forward_group(group, model, layer, methods, opts, device, seed)
        group[0]["_pre"] = ([id(it) for it in group], res)
    return items


def explained_group(items: list[dict[str, Any]], model: nn.Module, layer: nn.Module,
                    methods: Sequence[str], opts: Mapping[str, Any], device: torch.device,
                    seed: int) -> Explained:
    """:func:`forward_group` of one shape group, unless :func:`precompute` already ran it."""
    pre = items[0].get("_pre")
    if pre is not None and pre[0] == [id(it) for it in items]:
        return pre[1]
    return forward_group(items, model, layer, methods, opts, device, seed)


def forward_group(items: list[dict[str, Any]], model: nn.Module, layer: nn.Module,
                  methods: Sequence[str], opts: Mapping[str, Any], device: torch.device,
                  seed: int) -> Explained:
    """Explain one shape group (every method, all T classes of each image at once): returns
    ``targets`` (B,T) long (padded with each image's first class), ``counts`` (each image's real T)
    and ``{method: (heat (B,T,h',w'), logits (B,C))}``."""
    B = len(items)
    images = _stacked_images(items, model, device)
    targets, counts = _padded_targets(items)
    targets = targets.to(device)
    micro = B
    if device.type == "cpu" and B > 1:
        prof = profile_model(model)
        if prof is not None and prof.activations > 0:
            micro = micro_batch_size(prof.activations, *images.shape[-2:])
    from gridcam import cam

    explained = {}
    for method in methods:
        mopts = dict(opts)
        info = cam.METHOD_INFO.get(method)
        if info is not None and "generator" in info.options and "generator" not in mopts:
            # Random methods (SmoothGrad's noise, RISE's masks): seeded by the batch's first image
            # (its key, as the SPG draws), so reproducible for a given batch plan.
            g = torch.Generator(device=device)
            g.manual_seed(key_seed(seed + 1, str(items[0]["key"])))
            mopts["generator"] = g
        # a random method draws for the whole batch at once: split, it would draw other numbers
        m = B if "generator" in mopts else micro
        parts = [explain(method, model, layer, images[i:i + m], targets[i:i + m], mopts)
                 for i in range(0, B, m)]
        explained[method] = (parts[0] if len(parts) == 1 else
                             (torch.cat([h for h, _ in parts]), torch.cat([lg for _, lg in parts])))
    return targets, counts, explained


def _stacked_images(items: list[dict[str, Any]], model: nn.Module,
                    device: torch.device) -> torch.Tensor:
    """(B,3,h,w) images of a group on ``device``: the loader's stacked tensor when it is exactly
    this group (:func:`gridcam.evaluation.pipeline.prestack`), else stacked here."""
    B = len(items)
    # Inputs in the model's dtype (a float64 model makes results independent of the batch size:
    # its batch-size-dependent rounding is far below the float32 the heatmaps are computed in).
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    stacked = items[0].get("_stacked")
    if not (isinstance(stacked, torch.Tensor) and stacked.shape[0] == B
            and all(it.get("_stacked") is stacked for it in items)):
        stacked = torch.stack([it["image"] for it in items])  # not pre-stacked by the loader
    return stacked.to(device, dtype, non_blocking=True)


def _padded_targets(items: list[dict[str, Any]]) -> tuple[torch.Tensor, list[int]]:
    """(B,T) long target classes (T = the largest count, at least 1), each image's row padded
    with its first class (or 0; padded heatmaps are dropped), and each image's real count."""
    counts = [int(torch.as_tensor(it["classes"]).numel()) for it in items]
    targets = torch.zeros((len(items), max(1, max(counts))), dtype=torch.long)
    for b, it in enumerate(items):
        cl = torch.as_tensor(it["classes"], dtype=torch.long).flatten()
        if cl.numel():
            targets[b, : cl.numel()] = cl
            targets[b, cl.numel():] = cl[0]
    return targets, counts
