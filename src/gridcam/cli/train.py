"""``gridcam train imagenet|coco``: flags -> :class:`~gridcam.training.config.TrainConfig` -> :func:`gridcam.train`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import fields
from typing import TYPE_CHECKING

from gridcam.cli.common import DEFAULT_WORKERS as _DEFAULT_WORKERS
from gridcam.cli.common import (
    add_alias,
    add_device_option,
    add_model_options,
    at_least,
    check_output_dir,
    non_negative,
    positive,
)
from gridcam.recipes import recipe

if TYPE_CHECKING:
    from gridcam.training.config import TrainConfig


#: ``--pretrained`` given without a file (the paper's torchvision flag).
BARE = "<bare --pretrained>"


def recipe_text(dataset: str) -> str:
    """One sentence: the paper's recipe that the defaults of ``gridcam train DATASET`` are."""
    r = recipe(dataset)
    steps = "/10 at epochs 24 and 30" if dataset == "coco" else "/10 every 30 epochs"
    return (f"The defaults are the paper's ResNet18 {'COCO' if dataset == 'coco' else 'ImageNet'} "
            f"recipe: -a resnet18, {int(r['epochs'])} epochs, SGD lr {r['lr']:g} ({steps}), "
            f"momentum 0.9, weight decay {r['wd']:g}, --lambda {r['lam']:g}, global batch 256, "
            f"224-px crops. On a CPU start small, e.g. -a tiny_resnet -b 16 --epochs 3 --image-size 64.")


# ---------------------------------------------------------------------------------------- train
def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train with the Grad-CAM consistency loss (or the baseline, --lambda 0)",
                       description="Train a classifier with the Grad-CAM consistency loss (--lambda 0: "
                                   "the baseline). " + recipe_text("imagenet"))
    kinds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in ("imagenet", "coco"):
        k = kinds.add_parser(name, help=f"{name}-style data",
                             description=f"Train on {name}-style data with the Grad-CAM consistency "
                                         f"loss. {recipe_text(name)}")
        k.add_argument("data", help="the dataset root: DATA/train/<class>/* (+ DATA/val)" if name == "imagenet"
                       else "the dataset root: DATA/train2014 + DATA/annotations/instances_train2014.json "
                            "(+ val2014)")
        k.set_defaults(func=main, _parser=k)
        _train_options(k, coco=(name == "coco"))
        add_model_options(k)
        _paper_options(k)


def _train_options(p: argparse.ArgumentParser, coco: bool) -> None:
    p.add_argument("-a", "--arch", default="resnet18", help="architecture (`gridcam models` lists the "
                   "built-in ones; also torchvision:NAME, timm:NAME, hf:NAME_OR_PATH, MODULE:FACTORY)")
    p.add_argument("-b", "--batch-size", type=positive, default=256,
                   help="GLOBAL batch over all ranks (per rank: batch / world size)")
    p.add_argument("-j", "--workers", type=non_negative, default=_DEFAULT_WORKERS,
                   help="data-loading processes per rank (default: min(4, CPU count), %(default)s here)")
    r = recipe("coco" if coco else "imagenet")
    p.add_argument("--epochs", type=non_negative, default=int(r["epochs"]),
                   help="total epochs to train (a resumed run continues up to this number)")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=r["lr"],
                   help="initial learning rate (--learning-rate: the paper's scripts' spelling)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", dest="wd", type=float, default=r["wd"],
                   help="weight decay (paper: 1e-4 ImageNet, 5e-4 COCO)")
    p.add_argument("--lambda", dest="lam", type=float, default=r["lam"],
                   help="weight of the Grad-CAM consistency loss; 0 = baseline (no composites)")
    p.add_argument("--maxpool", action="store_true", default=None,
                   help="global max pooling (GMP) instead of average (default: the pooling recorded in "
                        "--resume/--pretrained/--init, else average; contradicting --resume is an error, while "
                        "--pretrained/--init weights of average pooling start a GMP model)")
    p.add_argument("--resume", default=None,
                   help="checkpoint to continue from exactly (model, optimizer, schedule, RNG); "
                        "'auto' = the furthest one in --save-dir, if any (default: start fresh). On "
                        "COCO, a checkpoint with another class count (the paper's ImageNet model) "
                        "starts the run from its weights with the classifier dropped, as the paper's "
                        "script (= --init)")
    p.add_argument("--save-dir", default="runs/train", metavar="DIR",
                   help="folder of the checkpoints and train_log.jsonl (checked before training)")
    add_alias(p, "--save_dir", "--out", dest="save_dir")
    p.add_argument("--seed", type=int, default=None,
                   help="run seed (default: drawn once and stored in the checkpoints)")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="only validate the model (weights from --resume, --pretrained or --init)")
    p.add_argument("--pretrained", nargs="?", const=BARE, default=None, metavar="FILE",
                   help="weights file to start from (same classes; default: random init); gridcam "
                        "downloads nothing, so a bare --pretrained (the paper's torchvision flag) "
                        "asks for the file")
    p.add_argument("--init", default=None, metavar="FILE",
                   help="start from a checkpoint with its classifier dropped (ImageNet -> COCO; "
                        "default: random init)")
    p.add_argument("--negatives", choices=["batch", "dataset"], default="batch",
                   help="batch: composites from the current batch (no extra decoding); "
                        "dataset: the paper's loader-side sampling (3 extra images per sample)")
    p.add_argument("--detach-target", action="store_true",
                   help="stop gradients through the target heatmap of the original image")
    p.add_argument("--gradcam-variant", choices=["elementwise", "classic"], default="elementwise",
                   help="Grad-CAM of the consistency loss: elementwise (the paper's) or classic "
                        "(channel weights = mean gradient)")
    p.add_argument("--amp", action="store_true", help="autocast (bf16 where supported, else fp16) on CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--schedule", choices=["step", "cosine"], default="step",
                   help="step: lr x0.1 at --lr-steps; cosine: cosine annealing over --epochs")
    p.add_argument("--lr-steps", default=None,
                   help="comma-separated epochs where the step schedule divides lr by 10 "
                        f"(default: {'24,30' if coco else 'every 30 epochs'}, the paper's)")
    p.add_argument("-p", "--print-freq", type=positive, default=10,
                   help="refresh the progress numbers every N steps")
    p.add_argument("--image-size", type=at_least(32), default=224,
                   help="training crop in px (composites are twice it)")
    p.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.08, 1.0),
                   help="the random crop's share of the image area (torchvision's RandomResizedCrop "
                        "scale); raise MIN when objects are small or data is scarce")
    p.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm uses its running statistics and does not update them (fine-tuning "
                        "with small per-GPU batches)")
    if coco:
        p.add_argument("--train-split", default="train2014",
                       help="training split: DATA/<split>/ images, DATA/annotations/instances_<split>.json")
        p.add_argument("--val-split", default="val2014",
                       help="validation split (same layout); skipped when its annotations are absent")
        p.add_argument("--coco-negatives", default=None,
                       help="negatives index for --negatives dataset (default: "
                            "DATA/annotations/negatives_<train-split>.json if present, else built in memory)")
    add_device_option(p)


def _paper_options(p: argparse.ArgumentParser) -> None:
    """The paper's scripts' flags that have no direct equivalent (see :func:`paper_flags`)."""
    p.add_argument("--gpu", type=non_negative, default=None, metavar="N",
                   help="the paper's GPU id: the same as --device cuda:N (default: see --device)")
    p.add_argument("--num-gpus", type=positive, default=None, metavar="N",
                   help="the paper's multi-GPU flag: N > 1 prints the torchrun command that runs N "
                        "processes and exits 2 (under torchrun it must equal the world size; "
                        "default: one process)")


def config_from_args(args: argparse.Namespace) -> "TrainConfig":
    """Map the parsed ``gridcam train imagenet|coco`` flags onto a :class:`TrainConfig`."""
    from gridcam.training.config import TrainConfig, parse_lr_steps

    names = {f.name for f in fields(TrainConfig)} - {"step_callback"}
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw["dataset"] = args.dataset
    if kw.get("crop_scale") is not None:
        kw["crop_scale"] = tuple(kw["crop_scale"])
    if kw.get("lr_steps") is not None and not isinstance(kw["lr_steps"], tuple):
        kw["lr_steps"] = parse_lr_steps(kw["lr_steps"])
    return TrainConfig(**kw)


def paper_flags(args: argparse.Namespace) -> None:
    """Map the paper's own flags (``--gpu``, ``--num-gpus``, bare ``--pretrained``) onto ours, or
    raise GridcamError (``--num-gpus N``: with the exact torchrun command to run instead)."""
    from gridcam.errors import GridcamError

    if args.pretrained is BARE:
        raise GridcamError("--pretrained needs a weights FILE here (gridcam downloads nothing): download "
                           "the torchvision weights once (e.g. resnet18-f37072fd.pth) and pass --pretrained FILE")
    if args.gpu is not None:
        if args.device not in (None, f"cuda:{args.gpu}"):
            raise GridcamError(f"--gpu {args.gpu} contradicts --device {args.device}; give one of them")
        args.device = f"cuda:{args.gpu}"
    n = args.num_gpus
    if n is None:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if n < 1:
        raise GridcamError(f"--num-gpus must be >= 1, got {n}")
    if "WORLD_SIZE" in os.environ and n != world:
        raise GridcamError(f"--num-gpus {n} but torchrun started {world} processes; make them equal")
    if n > 1 and "WORLD_SIZE" not in os.environ:
        raise GridcamError(f"--num-gpus {n}: gridcam runs one process per GPU under torchrun; run: "
                           f"{torchrun_command(args, n)}")


def torchrun_command(args: argparse.Namespace, n: int) -> str:
    """The ``torchrun --nproc_per_node n ...`` command equivalent to ``args`` (without
    ``--num-gpus``/``--gpu``): every flag that differs from its default, as the user gave it."""
    parser: argparse.ArgumentParser = args._parser
    words = ["torchrun", "--standalone", "--nproc_per_node", str(n), "-m", "gridcam", "train",
             args.dataset, args.data]
    for action in parser._actions:
        if (not action.option_strings or action.help is argparse.SUPPRESS
                or action.dest in ("help", "num_gpus", "gpu", "device")):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is BARE:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))  # the canonical spelling
        words += [flag] if isinstance(action, argparse._StoreTrueAction) else [flag, str(value)]
    if args.device and not args.device.startswith("cuda"):
        words += ["--device", args.device]
    return shlex.join(words)


def main(args: argparse.Namespace) -> int:
    """``gridcam train imagenet|coco DATA ...``: exit 0 when done, 128+signal when interrupted
    (a resumable ``last.pth.tar`` was written), 3 when the loss became non-finite, 2 for a user
    error (one line; ``--num-gpus N`` > 1 outside torchrun: the torchrun command to run).

    What a run reports goes to stdout (the opening line, one line per epoch, the last line), so
    ``gridcam train ... > log.txt`` keeps it; the progress bar and warnings go to stderr."""
    from gridcam.training.config import check_config
    from gridcam.training.log import fmt, report_to
    from gridcam.training.loop import NonFiniteLoss, TrainingInterrupted, train

    paper_flags(args)
    config = config_from_args(args)
    check_config(config)  # the flags first (the architecture before the data), then the folder
    check_output_dir("--save-dir", config.save_dir)
    try:
        with report_to(sys.stdout):
            summary = train(config)
    except TrainingInterrupted as exc:
        print(f"gridcam: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    except NonFiniteLoss as exc:
        print(f"gridcam: error: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary.get("best_acc1")
        if not config.evaluate:
            print(f"gridcam: done: {summary['last_epoch']} epoch(s); best "
                  f"{'F1 overall' if config.dataset == 'coco' else 'top-1'} {fmt(best)}; "
                  f"checkpoints in {summary['save_dir']}", flush=True)
    return 0
