"""DDPM noise schedule with a DDPM (ancestral) and a DDIM sampler, epsilon prediction.

The math follows Ho et al. (DDPM) and Song et al. (DDIM) in the form diffusers' DDPMScheduler and
DDIMScheduler implement it, which is what Diffusion Policy trains and samples with:

* ``squaredcos_cap_v2``: the cosine schedule of Nichol & Dhariwal,
  alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2,
  beta_i = min(1 - alpha_bar((i+1)/N) / alpha_bar(i/N), 0.999).
* Forward process q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) with a_t = alphas_cumprod[t].
* Both samplers predict x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) and, with ``clip_sample``,
  clamp it to [-1, 1] at every step.
* DDPM step: the posterior mean of q(x_{t-1} | x_t, x0) plus the "fixed_small" posterior variance
  (1 - a_{t-1}) / (1 - a_t) * beta_t (diffusers' default, used by Diffusion Policy); no noise at t = 0.
* DDIM step: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z,
  sigma = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)). As in diffusers (default
  use_clipped_model_output=False) the direction term uses the model's eps, not one re-derived from
  the clipped x0. Past the last step a_prev = 1 ("set_alpha_to_one"), so the final step returns x0.

DDIM timestep spacing is diffusers' "leading" spacing with steps_offset 0:
``np.arange(steps) * (N // steps)`` reversed, e.g. [75, 50, 25, 0] for 4 of 100 steps, and each step
jumps to t - N // steps. With N not divisible by steps the top N % steps timesteps are never visited
(true of diffusers too); the initial Gaussian is then treated as x at the first visited timestep.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor], Tensor]


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    # Cap at 0.999: alpha_bar(1) is ~0, so the last beta would otherwise be 1 (x_T carries no signal
    # and 1/sqrt(a_T) blows up).
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])


def _randn(shape: tuple, generator: torch.Generator | None, device, dtype: torch.dtype) -> Tensor:
    """Gaussian noise drawn on the generator's device (a CPU generator can then seed a GPU sampler)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


class DDPMScheduler:
    """Noise schedule plus samplers. `alphas_cumprod` is a float32 (num_train_timesteps,) tensor."""

    def __init__(
        self,
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
    ):
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if prediction_type != "epsilon":
            raise NotImplementedError(
                f"prediction_type {prediction_type!r} is not supported; only 'epsilon' is"
            )
        if beta_schedule == "squaredcos_cap_v2":
            betas = _cosine_betas(num_train_timesteps)
        elif beta_schedule == "linear":  # diffusers' linear default range, kept for comparisons
            betas = np.linspace(1e-4, 0.02, num_train_timesteps)
        else:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}; use 'squaredcos_cap_v2' or 'linear'")
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.clip_sample = clip_sample
        self.prediction_type = prediction_type
        # Step coefficients are computed in float64 from this array (python floats in the sampling
        # loop: no tensor indexing per step); the public tensors are float32 as in diffusers.
        self._alphas_cumprod = np.cumprod(1.0 - betas)
        self.betas = torch.tensor(betas, dtype=torch.float32)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.tensor(self._alphas_cumprod, dtype=torch.float32)

    # ---- forward process ---------------------------------------------------------------------
    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """q(x_t | x_0): sqrt(a_t) * x0 + sqrt(1 - a_t) * noise.

        timesteps: (B,) (or an int), broadcast over x0's trailing dims."""
        t = torch.as_tensor(timesteps, device=x0.device).long()
        a = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t]
        a = a.reshape(a.shape + (1,) * (x0.ndim - a.ndim))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    # ---- samplers ------------------------------------------------------------------------------
    def ddim_timesteps(self, steps: int) -> list[int]:
        """The descending timesteps DDIM visits with `steps` steps ("leading" spacing)."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be in [1, {self.num_train_timesteps}], got {steps}")
        stride = self.num_train_timesteps // steps
        return [i * stride for i in reversed(range(steps))]

    def _alpha_prev(self, t_prev: int) -> float:
        return float(self._alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0

    def _predict_x0(self, x: Tensor, eps: Tensor, a_t: float) -> Tensor:
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        return x0.clamp(-1.0, 1.0) if self.clip_sample else x0

    def ddim_step(
        self,
        eps: Tensor,
        t: int,
        x: Tensor,
        t_prev: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One DDIM update from timestep t to t_prev (t_prev < 0 means 'to x0')."""
        a_t, a_prev = float(self._alphas_cumprod[t]), self._alpha_prev(t_prev)
        x0 = self._predict_x0(x, eps, a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) if eta > 0 else 0.0
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * _randn(x.shape, generator, x.device, x.dtype)
        return x_prev

    def ddpm_step(self, eps: Tensor, t: int, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One ancestral DDPM update from t to t - 1: posterior mean given the predicted x0, plus
        fixed_small noise."""
        a_t, a_prev = float(self._alphas_cumprod[t]), self._alpha_prev(t - 1)
        beta_t = 1 - a_t / a_prev
        x0 = self._predict_x0(x, eps, a_t)
        # Posterior q(x_{t-1} | x_t, x0) mean coefficients (Ho et al., eq. 7).
        mean = (math.sqrt(a_prev) * beta_t / (1 - a_t)) * x0 + (
            math.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)
        ) * x
        if t == 0:
            return mean
        var = max((1 - a_prev) / (1 - a_t) * beta_t, 1e-20)
        return mean + math.sqrt(var) * _randn(x.shape, generator, x.device, x.dtype)

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: tuple,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        device=None,
        method: str = "ddim",
        eta: float = 0.0,
    ) -> Tensor:
        """Denoise from Gaussian noise. model_fn(x_t (B,T,A), t (B,) long) -> predicted noise.
        method "ddim": `steps` evenly spaced timesteps (default 10), deterministic when eta == 0.
        method "ddpm": the full ancestral sampler over all num_train_timesteps (steps ignored).
        With clip_sample, the predicted x0 is clipped to [-1, 1] at every step (as diffusers does)."""
        if method not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampling method {method!r}; use 'ddim' or 'ddpm'")
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        x = _randn(tuple(shape), generator, device, torch.float32)

        def eps_at(x: Tensor, t: int) -> Tensor:
            return model_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=device))

        if method == "ddim":
            timesteps = self.ddim_timesteps(10 if steps is None else steps)
            for i, t in enumerate(timesteps):
                t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                x = self.ddim_step(eps_at(x, t), t, x, t_prev, eta=eta, generator=generator)
        else:
            for t in reversed(range(self.num_train_timesteps)):
                x = self.ddpm_step(eps_at(x, t), t, x, generator=generator)
        return x
