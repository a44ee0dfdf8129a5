"""Reading weights files safely: torchvision state dicts, the paper's checkpoints, and ours.

Every file is read with ``torch.load(weights_only=True)``: a file that holds pickled Python objects
(which could run code when unpickled) is refused with a clear message and nothing in it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from gridcam.errors import GridcamError
from gridcam.models.registry import classifier_prefix, list_models, shapes_on_meta, unwrap

StateDict = dict[str, torch.Tensor]
_BN_COUNTER = ".num_batches_tracked"


def safe_load(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    Raises GridcamError when the file is missing, is not a PyTorch file (truncated, another
    format), or holds pickled Python objects — those are refused and nothing in them runs.
    """
    path = Path(path)
    if not path.is_file():
        raise GridcamError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()
                       if "global" in ln.lower() and "unsupported" in ln.lower()), "")
        if not detail:  # not a disallowed object: the bytes are simply not a torch file
            raise GridcamError(f"cannot read checkpoint {path}: not a PyTorch weights file "
                               "(truncated or another format)") from None
        raise GridcamError(
            f"refused to load {path}: it contains pickled Python objects that are not plain "
            f"tensors/containers, and loading them could run arbitrary code ({detail}). "
            "Re-save only the state_dict with torch.save(model.state_dict(), ...).") from None
    except Exception as exc:  # truncated zip, wrong format, I/O error
        raise GridcamError(f"cannot read checkpoint {path}: {exc}") from None
    return obj


def read_checkpoint(path: str | Path) -> tuple[StateDict, dict[str, Any]]:
    """Read a weights file -> (clean state dict, metadata).

    Accepts a bare state dict (torchvision), ``{'state_dict': ...}`` (the paper's and ours, also
    ``'model'``). ``module.`` path components (DataParallel/DDP, also mid-key as in the paper's
    AlexNet ``features.module.0.weight``) are removed. Metadata: every other entry of the top-level
    dict (``epoch``, ``arch``, ``num_classes`` ...), without the optimizer state.
    """
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, Mapping):
        raise GridcamError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    meta: dict[str, Any] = {}
    sd: Any = obj
    for key in ("state_dict", "model", "model_state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            sd = obj[key]
            meta = {k: v for k, v in obj.items() if k not in (key, "optimizer")}
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise GridcamError(f"checkpoint {path} contains no tensors")
    clean = {".".join(p for p in k.split(".") if p != "module"): v for k, v in tensors.items()}
    return clean, meta


def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of classes = rows of the last 2-D weight (``fc.weight`` / ``classifier.6.weight``)."""
    for key in ("fc.weight", "classifier.6.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    weights = [k for k, v in state_dict.items() if k.endswith(".weight") and v.ndim == 2]
    if not weights:
        raise GridcamError("cannot tell the number of classes: no linear layer in the checkpoint")
    return int(state_dict[weights[-1]].shape[0])


def matching_archs(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The registered architectures whose keys and (non-classifier) shapes match ``state_dict``."""
    # Files saved before PyTorch 0.4.1 (e.g. torchvision's resnet50-19c8e357.pth) have no
    # BatchNorm ``num_batches_tracked`` counters; they do not tell architectures apart anyway.
    have = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith(_BN_COUNTER)}
    found = []
    for name in list_models():
        want = {k: v for k, v in shapes_on_meta(name).items() if not k.endswith(_BN_COUNTER)}
        if set(want) == set(have) and all(
            want[k] == have[k] for k in want if not k.startswith(("fc.", "classifier.6."))
        ):
            found.append(name)
    return found


def guess_arch(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The registered architecture whose keys and (non-classifier) shapes match, or None;
    GridcamError when several do (architectures that differ only in strides)."""
    found = matching_archs(state_dict)
    if len(found) > 1:  # same weights, other strides (tiny_resnet, tiny_resnet_s16): cannot tell
        raise GridcamError(f"the weights fit several architectures ({', '.join(found)}), which differ "
                           "only in their strides; pass the one it was trained as with -a/--arch")
    return found[0] if found else None


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                    drop_classifier: bool = False, source: str = "checkpoint") -> None:
    """Copy weights into ``model`` strictly; explain any mismatch.

    ``drop_classifier=True`` keeps the model's own (fresh) final linear layer, for transfer to a new
    label set (ImageNet -> COCO). A mismatch raises GridcamError (one line) counting the missing,
    unexpected and mis-shaped keys, with examples, and naming the architecture the file seems to be.
    """
    target = unwrap(model)
    sd = dict(state_dict)
    own = target.state_dict()
    if drop_classifier:
        prefix = classifier_prefix(target) + "."
        sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
        sd.update({k: v for k, v in own.items() if k.startswith(prefix)})
    # Old files lack BatchNorm's num_batches_tracked (unused in training/eval): keep the model's.
    sd.update({k: v for k, v in own.items() if k.endswith(_BN_COUNTER) and k not in sd})
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]  # model order
    if missing or unexpected or shape:
        prefix = classifier_prefix(target) + "."
        if not missing and not unexpected and all(k.startswith(prefix) for k in shape):
            raise GridcamError(
                f"{source} has {checkpoint_num_classes(sd)} classes but the model has "
                f"{checkpoint_num_classes(own)}; to fine-tune on a new label set, drop the "
                "classifier (--init / drop_classifier=True)")
        guess = " or ".join(matching_archs(sd)) or None
        parts = [f"{len(keys)} {label} keys (e.g. {', '.join(keys[:3])})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} of another shape (e.g. {k}: file {tuple(sd[k].shape)} vs model "
                         f"{tuple(own[k].shape)})")
        raise GridcamError(  # one line, like every user error
            f"{source} does not fit {type(target).__name__} "
            f"({'it looks like ' + guess if guess else 'no built-in architecture matches it'}; pass the "
            f"-a it was trained with): {'; '.join(parts)}")
    target.load_state_dict(sd, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path, drop_classifier: bool = False) -> dict[str, Any]:
    """Load a weights file into ``model`` (see :func:`read_checkpoint`); return its metadata."""
    sd, meta = read_checkpoint(path)
    load_state_dict(model, sd, drop_classifier=drop_classifier, source=str(path))
    return meta
