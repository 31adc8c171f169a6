"""Image encoders of the diffusion policy, in plain torch (no torchvision).

`ResNet18GN` is ResNet-18 with GroupNorm in place of BatchNorm (Diffusion Policy's
`replace_bn_with_gn`: num_features // 16 groups), its width configurable; `RgbCameraEncoder`
crops (random window in training, centre in eval), runs the backbone, turns the last feature map
into soft keypoints (`SpatialSoftmax`) and projects them (LeRobot's `DiffusionRgbEncoder`);
`VisionEncoder` serves several cameras with per-camera or shared weights. `RgbEncoder` is the older
small encoder of the privileged `obs_mode="rgb"` policies.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with about channels // 16 groups (at least 1, always dividing channels)."""
    groups = max(1, channels // 16)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def crop_images(img: torch.Tensor, size: int, random: bool) -> torch.Tensor:
    """Crop (B, C, H, W) to size x size: an independent random window per sample, or the centre."""
    b, c, h, w = img.shape
    if h < size or w < size:
        raise ValueError(f"image {h}x{w} is smaller than the crop {size}x{size}")
    if h == size and w == size:
        return img
    if not random:
        top, left = (h - size) // 2, (w - size) // 2
        return img[:, :, top:top + size, left:left + size]
    top = torch.randint(0, h - size + 1, (b,), device=img.device)
    left = torch.randint(0, w - size + 1, (b,), device=img.device)
    ar = torch.arange(size, device=img.device)
    rows = (top[:, None] + ar)[:, None, :, None].expand(b, c, size, w)
    img = img.gather(2, rows)
    cols = (left[:, None] + ar)[:, None, None, :].expand(b, c, size, size)
    return img.gather(3, cols)


def to_unit_range(rgb: torch.Tensor) -> torch.Tensor:
    """Frames (B, H, W, 3) uint8 (or float in [0, 1]) as float (B, 3, H, W) in [0, 1]."""
    x = rgb.permute(0, 3, 1, 2)
    return x.float() / 255.0 if not x.is_floating_point() else x.float()


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinates of each feature map's softmax: (B, C, H, W) -> (B, 2C) in [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the soft keypoints of x as (B, 2C), (x, y) per channel."""
        b, c, h, w = x.shape
        attn = torch.softmax(x.reshape(b, c, h * w).float(), dim=-1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device),
                                torch.linspace(-1, 1, w, device=x.device), indexing="ij")
        kx = (attn * xs.reshape(1, 1, -1)).sum(-1)
        ky = (attn * ys.reshape(1, 1, -1)).sum(-1)
        return torch.stack([kx, ky], dim=-1).reshape(b, 2 * c)


class BasicBlockGN(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with GroupNorm; stride 2 halves the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = group_norm(c_out)
        self.downsample = (nn.Identity() if stride == 1 and c_in == c_out else
                           nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), group_norm(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(norm(conv(relu(norm(conv(x))))) + downsample(x))."""
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.downsample(x))


class ResNet18GN(nn.Module):
    """ResNet-18 trunk (7x7/2 stem, 3x3/2 max-pool, 4 stages of 2 basic blocks), GroupNorm, no pooling head.

    width is the first stage's channels (64 in ResNet-18); the stages have width x (1, 2, 4, 8).
    (B, 3, H, W) -> (B, 8 * width, ~H/32, ~W/32). stages < 4 keeps only the first ones, so small frames
    keep a keypoint map of useful resolution (a 56-px crop: 2x2 with 4 stages, 7x7 with 2).
    With film_dim, each stage's output is FiLM-modulated (per-channel scale and bias) by a condition vector
    (the skill text), as in RT-1 / BC-Z, so the keypoints can follow the object the sentence names.
    """

    def __init__(self, width: int = 64, stages: int = 4, film_dim: int = 0) -> None:
        super().__init__()
        if not 1 <= int(stages) <= 4:
            raise ValueError(f"ResNet18GN stages must be 1..4, got {stages}")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), group_norm(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, films, c_prev = [], [], width
        for i, mult in enumerate((1, 2, 4, 8)[:int(stages)]):
            c = width * mult
            blocks.append(nn.Sequential(BasicBlockGN(c_prev, c, 1 if i == 0 else 2), BasicBlockGN(c, c, 1)))
            if film_dim:
                films.append(nn.Linear(film_dim, 2 * c))
            c_prev = c
        self.stages = nn.Sequential(*blocks)
        self.films = nn.ModuleList(films) if films else None
        self.out_channels = c_prev
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for lin in films:  # start as the identity: scale 1 + 0, bias 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Feature maps of images x (B, 3, H, W); cond (B, film_dim) when built with film_dim."""
        x = self.stem(x)
        if self.films is None:
            return self.stages(x)
        if cond is None:
            raise ValueError("this encoder is FiLM-conditioned: pass the condition (B, film_dim)")
        for stage, film in zip(self.stages, self.films):
            x = stage(x)
            scale, bias = film(cond.to(x.dtype)).chunk(2, dim=-1)
            x = x * (1.0 + scale[:, :, None, None]) + bias[:, :, None, None]
        return x


class RgbCameraEncoder(nn.Module):
    """One camera: crop -> ResNet18GN -> 1x1 conv to keypoint maps -> spatial softmax -> Linear + ReLU."""

    def __init__(self, crop_size: int, width: int = 64, num_keypoints: int = 32, out_dim: int = 64,
                 stages: int = 4, film_dim: int = 0) -> None:
        super().__init__()
        self.crop_size = int(crop_size)
        self.backbone = ResNet18GN(width, stages, film_dim)
        self.keypoints = nn.Conv2d(self.backbone.out_channels, num_keypoints, 1)
        self.pool = SpatialSoftmax()
        self.out = nn.Sequential(nn.Linear(2 * num_keypoints, out_dim), nn.ReLU())
        self.out_dim = out_dim

    def crop(self, img: torch.Tensor) -> torch.Tensor:
        """Crop (B, C, H, W) to crop_size: a random window per sample in training, the centre in eval."""
        return crop_images(img, self.crop_size, random=self.training)

    def keypoints_of(self, rgb: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The (B, 2K) soft keypoints of frames (B, H, W, 3), coordinates in [-1, 1] (cond: the FiLM input)."""
        x = self.crop(to_unit_range(rgb)) * 2.0 - 1.0
        return self.pool(self.keypoints(self.backbone(x, cond)))

    def forward(self, rgb: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode frames (B, H, W, 3) uint8 (or float in [0, 1]) into (B, out_dim)."""
        return self.out(self.keypoints_of(rgb, cond))


class VisionEncoder(nn.Module):
    """Several cameras, each through its own RgbCameraEncoder or all through one (shared=True).

    forward({camera: (B, H, W, 3)}) -> (B, len(cameras) * out_dim), features concatenated in camera order.
    """

    def __init__(self, cameras: Sequence[str], crop_size: int, width: int = 64, num_keypoints: int = 32,
                 out_dim: int = 64, shared: bool = False, stages: int = 4, film_dim: int = 0) -> None:
        super().__init__()
        self.cameras, self.shared = tuple(cameras), bool(shared)
        make = lambda: RgbCameraEncoder(crop_size, width, num_keypoints, out_dim, stages, film_dim)  # noqa: E731
        if self.shared:
            self.encoder = make()
        else:
            self.encoders = nn.ModuleDict({c: make() for c in self.cameras})
        self.out_dim = out_dim * len(self.cameras)

    def encoder_for(self, camera: str) -> RgbCameraEncoder:
        """The encoder that sees camera's frames."""
        return self.encoder if self.shared else self.encoders[camera]

    def forward(self, frames: dict, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features (B, len(cameras) * out_dim) of {camera: (B, H, W, 3)} frames (cond (B, F): the FiLM input)."""
        missing = [c for c in self.cameras if c not in frames]
        if missing:
            raise KeyError(f"vision encoder needs frames of camera(s) {missing}; got {sorted(frames)}")
        if self.shared:  # one batched pass over every camera's frames
            b = frames[self.cameras[0]].shape[0]
            cc = None if cond is None else cond.repeat(len(self.cameras), 1)
            out = self.encoder(torch.cat([frames[c] for c in self.cameras], dim=0), cc)
            return out.reshape(len(self.cameras), b, -1).transpose(0, 1).reshape(b, -1)
        return torch.cat([self.encoders[c](frames[c], cond) for c in self.cameras], dim=-1)


# ----------------------------------------------------------------------------- the older small encoder
class _BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm (stride 2 halves the resolution)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        g = lambda c: nn.GroupNorm(max(1, c // 16), c)  # noqa: E731
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), g(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), g(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), g(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual sum of the two convolutions and the (projected) input, then ReLU."""
        return F.relu(self.body(x) + self.skip(x))


class RgbEncoder(nn.Module):
    """Small ResNet (GroupNorm) + spatial softmax on uint8 frames; random crop when training, centre crop in eval."""

    def __init__(self, crop_size: int, channels: tuple = (32, 64, 128), num_keypoints: int = 32,
                 out_dim: int = 64) -> None:
        super().__init__()
        self.crop_size = crop_size
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                                   nn.GroupNorm(max(1, channels[0] // 16), channels[0]), nn.ReLU()]
        c_prev = channels[0]
        for i, c in enumerate(channels):
            layers.append(_BasicBlock(c_prev, c, 1 if i == 0 else 2))
            c_prev = c
        self.backbone = nn.Sequential(*layers)
        self.keypoints = nn.Conv2d(c_prev, num_keypoints, 1)
        self.pool = SpatialSoftmax()
        self.out = nn.Sequential(nn.Linear(2 * num_keypoints, out_dim), nn.ReLU())

    def crop(self, img: torch.Tensor) -> torch.Tensor:
        """Crop (B, C, H, W) to crop_size: a random window per sample in training, the centre in eval."""
        return crop_images(img, self.crop_size, random=self.training)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Encode frames (B, H, W, 3) uint8 (or float in [0, 1]) into (B, out_dim)."""
        x = self.crop(to_unit_range(rgb)) * 2.0 - 1.0
        return self.out(self.pool(self.keypoints(self.backbone(x))))


def feature_map_size(size: int, stages: int = 4) -> int:
    """Side of ResNet18GN's last feature map for a size x size input."""
    for _ in range(1 + int(stages)):  # stem conv, max-pool, the stride-2 stages after the first
        size = math.floor((size - 1) / 2) + 1
    return size
