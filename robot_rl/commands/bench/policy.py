"""`robot-rl bench policy`: diffusion-policy inference latency and training throughput on the CPU.

Latency is what a robot waits for one action chunk at batch 1: encode the observation (two frames:
state vectors, or 84x84 RGB images through a small ConvEncoder) and run the sampler, timed under
`torch.inference_mode()` and reported as the median over repeats. Each network is timed with DDIM
at 4, 8, 10 and 16 steps beside the full 100-step DDPM ancestral sampler in the same run, in float32
and with the weights cast to bfloat16 (scheduler arithmetic stays float32). Two UNet sizes: the small
default (64, 128, 256) and the ResiP / Diffusion Policy sim size (256, 512, 1024).

Baseline for our CPU convolution (GemmConv1d): one denoising step of the same weights with torch's
nn.Conv1d. Training throughput: forward + backward + AdamW on the epsilon loss at batch 64, horizon
16, float32.

At batch 1 a UNet this size is limited by reading its weights from memory every denoising step
(~264 MB in float32 for the ResiP size), so bfloat16 and the machine's memory bandwidth matter
more than FLOPs. Run on an otherwise idle machine: the load average is reported because OpenMP
threads competing with other processes for a core can slow small ops down many times over (on a
busy machine, OMP_NUM_THREADS=1 gives steadier figures). Threads are left as the caller set them,
except in --quick, a smoke test of the small size on one thread.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

from robot_rl.policies.encoders import ConvEncoder
from robot_rl.policies.scheduler import DDPMScheduler
from robot_rl.policies.unet import ConditionalUnet1D, GemmConv1d

ACTION_DIM = 10  # ResiP / FurnitureBench: position 3 + 6-D rotation + gripper 1
HORIZON = 16
OBS_STEPS = 2
STATE_DIM = 25  # global cond for state input: 2 x 25
IMAGE_SIZE = 84
IMAGE_FEATURES = 64  # ConvEncoder output per frame; global cond for image input: 2 x 64
TRAIN_BATCH = 64
DDIM_STEPS = (4, 8, 10, 16)

SIZES = {
    "small": dict(down_dims=(64, 128, 256), diffusion_step_embed_dim=128),
    "resip": dict(down_dims=(256, 512, 1024), diffusion_step_embed_dim=256),
}


def _params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class _Policy:
    """UNet + (for images) encoder + scheduler: observation -> action chunk, as a robot would call it."""

    def __init__(self, size: str, obs: str, dtype: torch.dtype = torch.float32, seed: int = 0):
        torch.manual_seed(seed)  # same weights for the float32 and bfloat16 variants
        self.encoder = ConvEncoder(3, IMAGE_FEATURES, IMAGE_SIZE) if obs == "image" else None
        cond_dim = OBS_STEPS * (IMAGE_FEATURES if obs == "image" else STATE_DIM)
        self.unet = ConditionalUnet1D(ACTION_DIM, cond_dim, **SIZES[size])
        self.scheduler = DDPMScheduler(100)
        self.dtype = dtype
        for m in self.modules():
            m.to(dtype)

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.encoder, self.unet) if m is not None]

    def global_cond(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, OBS_STEPS, STATE_DIM) or (B, OBS_STEPS, 3, H, W) -> (B, cond_dim)."""
        obs = obs.to(self.dtype)
        if self.encoder is None:
            return obs.flatten(1)
        b = obs.shape[0]
        return self.encoder(obs.flatten(0, 1)).reshape(b, -1)  # frames folded into the batch

    def eps_fn(self, cond: torch.Tensor):
        return lambda x, t: self.unet(x.to(self.dtype), t, cond).float()

    def act(self, obs: torch.Tensor, method: str, steps: int | None, seed: int = 0) -> torch.Tensor:
        cond = self.global_cond(obs)
        return self.scheduler.sample(
            self.eps_fn(cond),
            (obs.shape[0], HORIZON, ACTION_DIM),
            steps=steps,
            method=method,
            generator=torch.Generator().manual_seed(seed),
        )


def _observation(obs: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if obs == "image":
        return torch.rand(batch, OBS_STEPS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return torch.randn(batch, OBS_STEPS, STATE_DIM, generator=g)


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def latency(size: str, obs: str, dtype: torch.dtype, repeats: int, ddpm_repeats: int) -> dict:
    policy = _Policy(size, obs, dtype)
    for m in policy.modules():
        m.eval()
    o = _observation(obs, 1)
    out: dict = {
        "size": size,
        "input": obs,
        "dtype": str(dtype).removeprefix("torch."),
        "unet_params": _params(policy.unet),
        "encoder_params": _params(policy.encoder),
    }
    with torch.inference_mode():
        policy.act(o, "ddim", 4)  # warm-up: allocator, oneDNN primitive caches
        out["encode_ms"] = _median_ms(lambda: policy.global_cond(o), repeats)
        out["ddim_ms"] = {
            str(k): _median_ms(lambda k=k: policy.act(o, "ddim", k), repeats) for k in DDIM_STEPS
        }
        out["ddpm100_ms"] = _median_ms(lambda: policy.act(o, "ddpm", None), ddpm_repeats)
        if dtype != torch.float32:
            # How far one reduced-precision noise prediction is from float32 (same weights, same input).
            ref = _Policy(size, obs, torch.float32)
            x, t = torch.randn(1, HORIZON, ACTION_DIM), torch.tensor([50])
            e_ref = ref.eps_fn(ref.global_cond(o))(x, t)
            e = policy.eps_fn(policy.global_cond(o))(x, t)
            out["eps_rel_err_vs_fp32"] = float((e - e_ref).norm() / e_ref.norm())
    out["ms_per_denoise_step"] = out["ddpm100_ms"] / 100
    out["load_average_1min"] = os.getloadavg()[0]  # per row: shows which rows another process slowed
    out["ddpm100_over_ddim"] = {k: out["ddpm100_ms"] / v for k, v in out["ddim_ms"].items()}
    return out


def _with_native_convs(unet: ConditionalUnet1D) -> ConditionalUnet1D:
    """A copy of `unet` with every GemmConv1d swapped for torch's nn.Conv1d (same weights): the baseline."""
    native = copy.deepcopy(unet)
    for module in list(native.modules()):
        for name, child in module.named_children():
            if isinstance(child, GemmConv1d):
                conv = torch.nn.Conv1d(
                    child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding
                )
                conv.load_state_dict(child.state_dict())
                setattr(module, name, conv)
    return native


def conv_baseline(size: str, repeats: int) -> dict:
    """One denoising step (UNet forward, batch 1, float32): our GemmConv1d against torch's conv1d."""
    policy = _Policy(size, "state")
    unets = {"gemm_conv1d": policy.unet.eval(), "torch_conv1d": _with_native_convs(policy.unet).eval()}
    x, t, cond = (
        torch.randn(1, HORIZON, ACTION_DIM),
        torch.tensor([50]),
        torch.randn(1, OBS_STEPS * STATE_DIM),
    )
    out = {"size": size}
    with torch.inference_mode():
        for name, unet in unets.items():
            unet(x, t, cond)  # warm-up
            out[f"{name}_ms"] = _median_ms(lambda unet=unet: unet(x, t, cond), repeats)
    out["speedup"] = out["torch_conv1d_ms"] / out["gemm_conv1d_ms"]
    return out


def training(size: str, obs: str, steps: int) -> dict:
    policy = _Policy(size, obs)
    params = [p for m in policy.modules() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-6)  # Diffusion Policy's optimizer
    o = _observation(obs, TRAIN_BATCH)
    actions = torch.rand(TRAIN_BATCH, HORIZON, ACTION_DIM) * 2 - 1

    def step():
        noise = torch.randn_like(actions)
        t = torch.randint(0, policy.scheduler.num_train_timesteps, (TRAIN_BATCH,))
        pred = policy.unet(policy.scheduler.add_noise(actions, noise, t), t, policy.global_cond(o))
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (also allocates Adam state)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    return {
        "size": size,
        "input": obs,
        "steps_per_s": 1.0 / seconds,
        "ms_per_step": seconds * 1e3,
        "params": _params(policy.unet) + _params(policy.encoder),
    }


def run(quick: bool = False) -> dict:
    repeats, ddpm_repeats, train_steps = (1, 1, 1) if quick else (5, 3, 5)
    dtypes = (torch.float32,) if quick else (torch.float32, torch.bfloat16)
    # --quick is a smoke test (every code path, meaningless figures): the small size only, on one
    # thread (two OpenMP threads on a shared 2-core machine made one training step take seconds).
    sizes = ("small",) if quick else tuple(SIZES)
    if quick:
        torch.set_num_threads(1)
    results = {
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
        "batch": 1,
        "horizon": HORIZON,
        "action_dim": ACTION_DIM,
        "obs_steps": OBS_STEPS,
        "repeats": repeats,
        "ddpm_repeats": ddpm_repeats,
        "quick": quick,
        "latency": [],
        "conv_baseline": [],
        "training": [],
    }
    for size in sizes:
        for obs in ("state", "image"):
            for dtype in dtypes:
                results["latency"].append(latency(size, obs, dtype, repeats, ddpm_repeats))
    for size in sizes:
        results["conv_baseline"].append(conv_baseline(size, 3 if quick else 20))
    for size in sizes:
        for obs in ("state",) if quick else ("state", "image"):
            results["training"].append(training(size, obs, train_steps))
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    return results


def format_table(r: dict) -> str:
    lines = [
        f"policy benchmark: ConditionalUnet1D on CPU, torch {r['torch']}, {r['threads']} threads, "
        f"{r['cpu_count']} cores, horizon {r['horizon']}, action dim {r['action_dim']}, "
        f"{r['obs_steps']} obs frames",
        f"load average (1 min) at start {r['load_average_1min_at_start']:.2f}, "
        f"at end {r['load_average_1min_at_end']:.2f}"
        + (
            "  <- other processes are using the CPU: timings are inflated"
            if r["load_average_1min_at_start"] > 0.5
            else ""
        ),
        "",
        f"inference latency at batch 1, ms per action chunk (encoder + sampler), median of {r['repeats']} "
        f"(DDPM: {r['ddpm_repeats']})",
        f"{'size':<6} {'input':<6} {'dtype':<9}{'UNet params':>12}{'enc ms':>8}{'ms/step':>9}"
        + "".join(f"{'DDIM ' + k:>9}" for k in map(str, DDIM_STEPS))
        + f"{'DDPM 100':>10}{'DDPM/DDIM10':>13}{'load':>6}",
    ]
    for m in r["latency"]:
        lines.append(
            f"{m['size']:<6} {m['input']:<6} {m['dtype']:<9}"
            f"{m['unet_params'] / 1e6:>11.2f}M{m['encode_ms']:>8.2f}"
            f"{m['ms_per_denoise_step']:>9.2f}"
            + "".join(f"{m['ddim_ms'][str(k)]:>9.1f}" for k in DDIM_STEPS)
            + f"{m['ddpm100_ms']:>10.1f}{m['ddpm100_over_ddim']['10']:>12.1f}x"
            f"{m['load_average_1min']:>6.1f}"
        )
    errs = [m for m in r["latency"] if "eps_rel_err_vs_fp32" in m]
    if errs:
        lines.append(
            "bfloat16 noise prediction vs float32, relative error: "
            + ", ".join(f"{m['size']}/{m['input']} {m['eps_rel_err_vs_fp32']:.1e}" for m in errs)
        )
    encoder = next((m["encoder_params"] for m in r["latency"] if m["encoder_params"]), 0)
    if encoder:
        lines.append(
            f"image input: ConvEncoder {encoder / 1e3:.0f}k params, "
            "run once per chunk (not per denoising step)"
        )
    resip = [m for m in r["latency"] if m["size"] == "resip" and m["input"] == "state"]
    if resip:
        lines.append(
            "target: ResiP-size UNet, DDIM 10 at batch 1 <= 50 ms "
            "(reference 455 ms for a 63 M-param UNet); measured "
            + ", ".join(f"{m['ddim_ms']['10']:.0f} ms {m['dtype']}" for m in resip)
        )
    lines.append(
        "one denoising step, float32, batch 1: UNet with GemmConv1d vs the same weights in torch.nn.Conv1d: "
        + ", ".join(
            f"{m['size']} {m['gemm_conv1d_ms']:.2f} vs {m['torch_conv1d_ms']:.2f} ms ({m['speedup']:.2f}x)"
            for m in r["conv_baseline"]
        )
    )
    lines += [
        "",
        f"training, float32, batch {TRAIN_BATCH}, horizon {r['horizon']}: forward + backward + AdamW",
        f"{'size':<6} {'input':<6}{'params':>10}{'steps/s':>10}{'ms/step':>10}",
    ]
    for m in r["training"]:
        lines.append(
            f"{m['size']:<6} {m['input']:<6}{m['params'] / 1e6:>9.2f}M"
            f"{m['steps_per_s']:>10.2f}{m['ms_per_step']:>10.0f}"
        )
    return "\n".join(lines)
