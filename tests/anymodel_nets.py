"""Small outside models for the ``MODULE:FACTORY`` tests (``-a anymodel_nets:tiny_vit``).

``tests/`` is on ``sys.path`` under pytest, so these factories are importable by that name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OddCNN(nn.Module):
    """A CNN with an unusual layout: a ModuleDict trunk and a separate head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.trunk = nn.ModuleDict({
            "stem": nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()),
            "stage_a": nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
            "stage_b": nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU()),
        })
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.trunk.values():
            x = stage(x)
        return self.head(x)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sdpa: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.sdpa = sdpa
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:  # PyTorch's fused kernel, as timm and torchvision use
            mixed = F.scaled_dot_product_attention(q, k, v)
        else:
            mixed = (q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5).softmax(-1) @ v
        x = x + self.proj(mixed.transpose(1, 2).reshape(B, N, D))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A ViT with a class token: 8 px patches, 32 px native input (a 4x4 grid).

    ``dynamic``: interpolate the position embeddings for other input sizes (like timm's
    ``dynamic_img_size=True``); otherwise any other size raises, like a fixed-size ViT."""

    def __init__(self, num_classes: int = 10, dim: int = 32, depth: int = 2, dynamic: bool = True,
                 sdpa: bool = False) -> None:
        super().__init__()
        self.dynamic = dynamic
        self.patch_embed = nn.Conv2d(3, dim, 8, stride=8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, 2, sdpa) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B,D,h,w)
        B, D, h, w = x.shape
        pos = self.pos_embed
        if (h, w) != (4, 4):
            if not self.dynamic:
                raise ValueError(f"input must be 32x32, got a {h}x{w} patch grid")
            pos = F.interpolate(pos.transpose(1, 2).reshape(1, D, 4, 4), size=(h, w), mode="bilinear",
                                align_corners=False).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.flatten(2).transpose(1, 2) + pos], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class MLP(nn.Module):
    """No spatial layer at all."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))
        self.pretrained_cfg = {"input_size": (3, 16, 16)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.interpolate(x, size=(16, 16)))


def odd_cnn(num_classes: int = 10) -> nn.Module:
    return OddCNN(num_classes)


def tiny_vit(num_classes: int = 10) -> nn.Module:
    return TinyViT(num_classes, dynamic=True)


def tiny_vit_sdpa(num_classes: int = 10) -> nn.Module:
    return TinyViT(num_classes, dynamic=True, sdpa=True)


def tiny_vit_fixed(num_classes: int = 10) -> nn.Module:
    return TinyViT(num_classes, dynamic=False)


def mlp(num_classes: int = 10) -> nn.Module:
    return MLP(num_classes)


def not_a_model(num_classes: int = 10) -> object:
    return object()


def torchvision_vit(num_classes: int = 10) -> nn.Module:
    """torchvision's own ``VisionTransformer`` at a test size (``vit_b_16``'s builder takes no
    size arguments): 32 px input, 8 px patches, 2 blocks of width 32. Its position embeddings are
    fixed, so gridcam resizes every input to 32 px; like every torchvision ViT its head starts at
    zero (the first batch's heatmaps are zero)."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=num_classes)
    model.pretrained_cfg = {"input_size": (3, 32, 32)}
    return model
