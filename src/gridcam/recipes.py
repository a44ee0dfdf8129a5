"""The paper's training recipes: one place for the numbers the CLI and the engine both default to.

Kept free of torch so ``gridcam --help`` stays fast.
"""

#: ImageNet: SGD lr 0.1, wd 1e-4, 90 epochs (lr / 10 every 30), λ = 25.
IMAGENET = {"epochs": 90, "lr": 0.1, "wd": 1e-4, "lam": 25.0}
#: COCO: lr 0.01, wd 5e-4 (the paper's COCO script), 36 epochs (lr / 10 at 24 and 30), λ = 1.
COCO = {"epochs": 36, "lr": 0.01, "wd": 5e-4, "lam": 1.0}


def recipe(dataset: str) -> dict[str, float]:
    """The defaults for ``dataset`` ("imagenet" or "coco")."""
    return dict(COCO if dataset == "coco" else IMAGENET)
