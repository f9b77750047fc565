"""Observation encoders that turn camera images into the global condition of the diffusion UNet."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialSoftmax(nn.Module):
    """Per-channel soft-argmax: (B, K, H, W) feature maps -> (B, 2K) expected (x, y) in [-1, 1].

    Keypoints keep *where* things are, which global average pooling throws away and manipulation needs.
    """

    def __init__(self, height: int, width: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("pos", torch.stack((xs.flatten(), ys.flatten()), dim=-1), persistent=False)  # (HW, 2)

    def forward(self, x: Tensor) -> Tensor:
        b, k = x.shape[:2]
        attn = torch.softmax(x.flatten(2), dim=-1)  # (B, K, HW)
        return (attn @ self.pos).reshape(b, 2 * k)


class ConvEncoder(nn.Module):
    """Small from-scratch CNN: (B, in_channels, image_size, image_size) float images -> (B, out_dim).

    Four 3x3 stride-2 convolutions (32, 64, 128, 128 channels; 84 -> 42 -> 21 -> 11 -> 6), each with
    GroupNorm and Mish. GroupNorm rather than BatchNorm because Diffusion Policy trains its
    encoders with GroupNorm (BatchNorm statistics interact badly with the EMA weights used at
    inference). Then a 1x1 conv to `num_keypoints` maps, a spatial softmax (keypoint coordinates)
    and a Linear to `out_dim`.

    Input scaling is the caller's job (e.g. uint8 / 255, optionally normalized); a stack of
    observation frames is encoded by folding it into the batch and concatenating the outputs.
    """

    def __init__(self, in_channels: int = 3, out_dim: int = 64, image_size: int = 84, num_keypoints: int = 32,
                 n_groups: int = 8):
        super().__init__()
        self.in_channels, self.image_size, self.out_dim = in_channels, image_size, out_dim
        layers, c_in, size = [], in_channels, image_size
        for c_out in (32, 64, 128, 128):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(n_groups, c_out), nn.Mish()]
            c_in, size = c_out, (size + 1) // 2  # k=3, s=2, p=1 gives ceil(size / 2)
        self.trunk = nn.Sequential(*layers)
        self.keypoints = nn.Conv2d(c_in, num_keypoints, 1)
        self.pool = SpatialSoftmax(size, size)
        self.head = nn.Linear(2 * num_keypoints, out_dim)

    def forward(self, images: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        return self.head(self.pool(self.keypoints(self.trunk(images))))
