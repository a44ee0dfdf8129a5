"""``gridcam explain``: predictions and heatmap overlays of one or more models on your own images."""

from __future__ import annotations

import argparse

from gridcam.cli.common import (
    add_alias,
    add_device_option,
    add_methods_option,
    check_output_dir,
    fraction,
    parse_methods,
    positive,
)


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="top-k predictions and heatmap overlays on your images (sheets compare models)",
        description="For each image: the top-k classes and one overlay PNG per requested class; with "
                    "several --checkpoint and/or methods, one sheet per image (rows = models, "
                    "columns = methods). Writes OUT/index.html and OUT/predictions.json.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                   help="REQUIRED: weights file (repeat to compare models: one sheet row each)")
    p.add_argument("-a", "--arch", default=None,
                   help="architecture when the file does not record it (default: recorded in the "
                        "file, else guessed from its keys)")
    add_methods_option(p, several=True)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--class", dest="target", default=None, metavar="C",
                        help="explain this class (index, wnid or name) instead of the top-k "
                             "(default: the top-k)")
    target.add_argument("--topk", type=positive, default=1, metavar="K", help="explain the K best classes")
    p.add_argument("--input-resize", type=positive, default=224,
                   help="shorter side of the model input in px (the paper evaluates at 448)")
    add_alias(p, "--input_resize", dest="input_resize", type=positive)
    p.add_argument("--out", default="explain", help="output folder")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="class list (one wnid per line) or LOC_synset_mapping.txt for readable names "
                        "(default: names recorded in the checkpoint, else a file beside the inputs)")
    p.add_argument("--annotations", default=None, metavar="COCO_JSON",
                   help="COCO annotation file: category names of a COCO model (default: none)")
    p.add_argument("--alpha", type=fraction, default=0.5, help="heatmap opacity (0..1)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap of the heatmaps (e.g. jet, "
                                                 "viridis, inferno)")
    add_device_option(p)
    p.set_defaults(func=main)


def check_cmap(name: str) -> None:
    """Refuse an unknown ``--cmap`` before any model is read (GridcamError listing a few)."""
    from matplotlib import colormaps

    from gridcam.errors import GridcamError

    if name not in colormaps:
        common = [c for c in ("jet", "viridis", "inferno", "magma", "plasma", "turbo", "gray", "hot")
                  if c in colormaps]
        raise GridcamError(f"--cmap {name!r}: not a matplotlib colormap; e.g. {', '.join(common)} "
                           "(matplotlib.colormaps lists them all)")


def main(args: argparse.Namespace) -> int:
    """Handler of ``gridcam explain IMAGE_OR_DIR...``: the flags checked (methods, colormap, the
    output folder), then the overlays, sheets and pages."""
    from gridcam.report.explain import ExplainConfig, run

    methods = parse_methods(args.methods, several=True)
    check_cmap(args.cmap)
    check_output_dir("--out", args.out)
    cfg = ExplainConfig(
        inputs=args.inputs, checkpoints=args.checkpoint, out=args.out, arch=args.arch,
        methods=methods, target=args.target,
        topk=args.topk, input_resize=args.input_resize, classes=args.classes,
        annotations=args.annotations, alpha=args.alpha, cmap=args.cmap, device=args.device)
    record = run(cfg)
    for entry in record["images"]:
        tops = "; ".join(f"{m}: " + ", ".join(f"{t['name']} {t['prob']:.2f}" for t in v["top"])
                         for m, v in entry["models"].items())
        print(f"{entry['image']}: {tops}")
    print(f"{len(record['images'])} image(s), {len(record['skipped'])} skipped; "
          f"open {args.out}/index.html")
    return 0
