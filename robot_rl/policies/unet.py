"""ConditionalUnet1D: the noise-prediction network of Diffusion Policy (Chi et al., 2023).

A 1-D U-Net over the time axis of an action chunk (B, T, action_dim). Every residual block is
conditioned by FiLM on one vector: the diffusion-step embedding concatenated with a global
observation feature. Layout, following the paper's CNN-based variant:

    step t -> sinusoidal embedding -> Linear, Mish, Linear            (diffusion_step_embed_dim)
    cond    = concat(step embedding, global_cond)
    down    : per level two ConditionalResidualBlock1D, then a stride-2 Conv1d (not at the last level)
    mid     : two ConditionalResidualBlock1D at the widest level
    up      : per level concat(skip), two ConditionalResidualBlock1D, then ConvTranspose1d x2
    final   : Conv1dBlock + 1x1 Conv1d back to action_dim

As in the reference implementation the skip taken at the first (full-resolution) level is never
used: the up path has one level fewer than the down path and pops the deepest skips first. We keep
that so that parameter counts and behaviour match published configurations; parameter names
follow the reference too (FiLM predicting scale and bias, i.e. its cond_predict_scale=True). One
small difference: the final Conv1dBlock uses `n_groups` (the reference hard-codes 8, the default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GemmConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, same state dict) that on the CPU runs as one matmul over unfolded windows.

    Why: at batch 1 the UNet's convolutions see only 4-16 time steps. PyTorch's CPU conv1d lowers to
    a GEMM whose N is that short time axis, a shape BLAS runs several times slower than the same
    product arranged as F.linear (time steps as rows, the weight as right-hand operand). On a 2-core
    AMD EPYC one float32 denoising step of the ResiP-size UNet drops from ~48 to ~37 ms (2 threads)
    and from ~85 to ~36 ms (1 thread); training at batch 64 is ~1.1-1.5x faster for that size and
    ~10 % slower for the small default, where per-op overhead dominates. `robot-rl bench policy`
    measures it. Other devices keep the native (cuDNN) convolution.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type != "cpu"
            or self.groups != 1
            or self.dilation != (1,)
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
        ):
            return super().forward(x)
        (k,), (s,), (p,) = self.kernel_size, self.stride, self.padding
        if p:
            x = F.pad(x, (p, p))
        b, c, _ = x.shape
        # (B, C_in, T_out, k) windows -> (B, T_out, C_in * k),
        # the same order as weight.reshape(C_out, C_in * k).
        cols = x.unfold(2, k, s).transpose(1, 2).reshape(b, -1, c * k)
        return F.linear(cols, self.weight.reshape(self.out_channels, -1), self.bias).transpose(1, 2)


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sin/cos embedding of a scalar (the diffusion step) into `dim` features.

    Always computed in float32: in bfloat16 an angle of ~100 rad is off by ~0.25 rad, which would
    blur neighbouring steps when the network itself runs in reduced precision.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"diffusion_step_embed_dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        # Geometric frequencies from 1 down to 1/10000.
        freqs = torch.exp(
            torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1))
        )
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class Downsample1d(nn.Module):
    """Halves T (stride-2 conv). A wrapper so parameter names match the reference implementation."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = GemmConv1d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    """Doubles T exactly (transposed conv, kernel 4, stride 2, padding 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Conv1dBlock(nn.Module):
    """Conv1d ('same' padding) -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            GemmConv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks; between them FiLM from the condition: h = scale * h + bias, per channel.

    The residual path is a 1x1 conv when the channel count changes (identity otherwise).
    """

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int = 5, n_groups: int = 8
    ):
        super().__init__()
        self.out_channels = out_channels
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        # Mish first: the condition is the raw concat of embedding and observation features.
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual_conv = (
            GemmConv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, in_channels, T), cond (B, cond_dim) -> (B, out_channels, T)."""
        h = self.blocks[0](x)
        film = self.cond_encoder(cond).unsqueeze(-1)  # (B, 2C, 1): broadcast over time
        scale, bias = film[:, : self.out_channels], film[:, self.out_channels :]
        h = scale * h + bias
        h = self.blocks[1](h)
        return h + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Predicts the noise in a noisy action chunk, conditioned on the diffusion step and an
    observation feature."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 128,
        down_dims: tuple[int, ...] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
    ):
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if not down_dims:
            raise ValueError("down_dims must name at least one level")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so that 'same' padding keeps T, got {kernel_size}")
        bad = [d for d in down_dims if d % n_groups]
        if bad:
            raise ValueError(
                f"every entry of down_dims must be divisible by n_groups={n_groups}; {bad} are not"
            )
        self.action_dim, self.global_cond_dim = action_dim, global_cond_dim
        self.down_dims = down_dims
        # Number of stride-2 downsamples: one after every level but the last.
        self.time_divisor = 2 ** (len(down_dims) - 1)

        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        cond_dim = dsed + global_cond_dim

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(c_in, c_out, cond_dim, kernel_size, n_groups)

        in_out = list(zip((action_dim,) + down_dims[:-1], down_dims))
        self.down_modules = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(in_out):
            last = level == len(in_out) - 1
            self.down_modules.append(
                nn.ModuleList(
                    [
                        block(c_in, c_out),
                        block(c_out, c_out),
                        nn.Identity() if last else Downsample1d(c_out),
                    ]
                )
            )

        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])

        # Up path mirrors the down levels except the first; each level takes 2x channels (skip concat).
        self.up_modules = nn.ModuleList()
        for c_in, c_out in reversed(in_out[1:]):
            self.up_modules.append(
                nn.ModuleList(
                    [
                        block(2 * c_out, c_in),
                        block(c_in, c_in),
                        Upsample1d(c_in),
                    ]
                )
            )

        start = down_dims[0]
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, kernel_size, n_groups), GemmConv1d(start, action_dim, 1)
        )

    def forward(self, sample: Tensor, timestep: Tensor | int, global_cond: Tensor) -> Tensor:
        """sample (B, T, action_dim) noisy action chunk; timestep (B,) long or an int;
        global_cond (B, global_cond_dim). Returns the predicted noise, shape (B, T, action_dim)."""
        if sample.ndim != 3 or sample.shape[-1] != self.action_dim:
            raise ValueError(f"sample must be (B, T, {self.action_dim}), got {tuple(sample.shape)}")
        batch, horizon = sample.shape[0], sample.shape[1]
        if horizon % self.time_divisor:
            raise ValueError(
                f"horizon T={horizon} must be divisible by 2**(len(down_dims)-1) = {self.time_divisor} "
                f"(down_dims={self.down_dims}); pad the action chunk or use fewer levels"
            )
        if global_cond.shape != (batch, self.global_cond_dim):
            raise ValueError(
                f"global_cond must be ({batch}, {self.global_cond_dim}), got {tuple(global_cond.shape)}"
            )

        # Accept an int, a 0-d tensor or a (B,) tensor; always feed the embedding a (B,) vector.
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"timestep must be an int, a scalar or shape ({batch},), got {tuple(t.shape)}")

        # Embed in float32, then run the MLP in the network's dtype (see SinusoidalPosEmb).
        step = self.diffusion_step_encoder[0](t).to(sample.dtype)
        for layer in self.diffusion_step_encoder[1:]:
            step = layer(step)
        cond = torch.cat((step, global_cond.to(sample.dtype)), dim=-1)

        x = sample.transpose(1, 2)  # Conv1d wants (B, C, T)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for res in self.mid_modules:
            x = res(x, cond)
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = res2(res1(x, cond), cond)
            x = up(x)
        return self.final_conv(x).transpose(1, 2)
