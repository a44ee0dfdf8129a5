"""``gridcam explain``: predictions and heatmap overlays of one or more models on your own images."""

from __future__ import annotations

import argparse



def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="top-k predictions and heatmap overlays on your images (sheets compare models)",
        description="For each image: the top-k classes and one overlay PNG per requested class; with "
                    "several --checkpoint and/or methods, one sheet per image (rows = models, "
                    "columns = methods). Writes OUT/index.html and OUT/predictions.json.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                   help="weights file (repeat to compare models: one sheet row each)")
    p.add_argument("-a", "--arch", default=None, help="architecture when the file does not record it")
    p.add_argument("--method", default="gradcam",
                   help="explanation method(s), comma-separated, e.g. gradcam,gradient (`gridcam methods` "
                        "lists them)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--class", dest="target", default=None, metavar="C",
                        help="explain this class (index, wnid or name) instead of the top-k")
    target.add_argument("--topk", type=int, default=1, metavar="K", help="explain the K best classes (default 1)")
    p.add_argument("--input-resize", type=int, default=224,
                   help="shorter side of the model input in px (default 224; the paper evaluates at 448)")
    p.add_argument("--out", default="explain", help="output folder (default ./explain)")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="class list (one wnid per line) or LOC_synset_mapping.txt for readable names")
    p.add_argument("--annotations", default=None, metavar="COCO_JSON",
                   help="COCO annotation file: category names of a COCO model")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (0..1)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap of the heatmaps")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from gridcam.report.explain import ExplainConfig, run

    cfg = ExplainConfig(
        inputs=args.inputs, checkpoints=args.checkpoint, out=args.out, arch=args.arch,
        methods=[m.strip() for m in args.method.split(",") if m.strip()], target=args.target,
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
