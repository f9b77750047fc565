"""Zero-shot CLIP reward (VLM-RM, Rocamonde et al.): R(x) = 1 - 1/2 * ||(x - g) P||^2 on unit-norm
embeddings, with the goal-baseline projection P = alpha * d d^T / ||d||^2 + (1 - alpha) I,
d = g - b (g: the goal prompt's embedding, b: a baseline prompt's). alpha = 0 is the plain
distance to the goal; alpha = 1 keeps only the direction from baseline to goal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robot_rl.errors import ConfigError


def goal_baseline_projection(goal: Tensor, baseline: Tensor, alpha: float) -> Tensor:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    d = goal - baseline
    eye = torch.eye(len(d), dtype=d.dtype)
    return alpha * torch.outer(d, d) / (d @ d) + (1.0 - alpha) * eye


def vlm_rm_reward(images: Tensor, goal: Tensor, baseline: Tensor, alpha: float) -> Tensor:
    """(B, D) image embeddings and (D,) text embeddings, all normalized here -> (B,) rewards."""
    x, g, b = (unit(t) for t in (images, goal, baseline))
    projected = (x - g) @ goal_baseline_projection(g, b, alpha)
    return 1.0 - 0.5 * (projected**2).sum(-1)


def unit(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class CLIPReward:
    """An open_clip model from a local checkpoint file (`vlm` extra): `reward(frames)` for uint8
    HWC frames. `model` names the architecture (e.g. ViT-B-32) the checkpoint is for."""

    def __init__(
        self,
        checkpoint: str,
        goal: str,
        baseline: str = "a robot arm on a table",
        alpha: float = 0.5,
        model: str = "ViT-B-32",
    ):
        if not Path(checkpoint).exists():
            raise ConfigError(
                f"no CLIP checkpoint at {checkpoint} (give the path of an open_clip .bin/.pt/.safetensors)"
            )
        try:
            import open_clip
        except ImportError:
            raise ConfigError("the CLIP reward needs the vlm extra: pip install -e '.[vlm]'") from None
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model, pretrained=str(checkpoint)
        )
        self.model.eval()
        tokenizer = open_clip.get_tokenizer(model)
        with torch.no_grad():
            text = self.model.encode_text(tokenizer([goal, baseline])).float()
        self.goal, self.baseline, self.alpha = text[0], text[1], alpha

    @torch.no_grad()
    def reward(self, frames: np.ndarray) -> np.ndarray:
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(np.asarray(f))) for f in frames])
        return vlm_rm_reward(
            self.model.encode_image(batch).float(), self.goal, self.baseline, self.alpha
        ).numpy()
