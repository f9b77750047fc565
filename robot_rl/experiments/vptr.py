"""`robot-rl vptr`: V-PTR in simulation, once per seed. An ICVF is pretrained on action-free
videos of the task family (rendered, written as mp4 files, imported like any lab's video), then
IQL on a small robot dataset starts its image encoder from the ICVF's, beside the same IQL from
scratch. See conf/vptr.yaml."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from robot_rl.errors import DatasetError
from robot_rl.experiments.seeds import Figure, SeedResults


def render_videos(cfg) -> None:
    """cfg.videos (one mp4 per episode of cfg.video_collect, camera at cfg.video_size px), then
    cfg.video: those files imported at the robot camera's size, as observation-only episodes."""
    from robot_rl.datasets.store import EpisodeStore
    from robot_rl.datasets.video import import_video
    from robot_rl.experiments.vlm_iql import collect_parts
    from robot_rl.utils.video import write_video

    camera = cfg.env.cameras[0]
    videos = Path(cfg.videos)
    if not videos.exists():
        partial = videos.with_name(videos.name + ".writing")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        env = OmegaConf.merge(OmegaConf.to_container(cfg.env, resolve=True), {"image_size": cfg.video_size})
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "episodes.zarr"
            collect_parts(env, cfg.video_collect, source)
            with EpisodeStore.open(source) as store:
                for i in range(store.n_episodes):  # the actions stay behind: video has none
                    write_video(
                        store.episode(i)[f"obs/image/{camera}"], partial / f"episode_{i:04d}.mp4", store.fps
                    )
        partial.rename(videos)
    store = Path(cfg.video)
    importing = store.with_name(store.name + ".importing")  # renamed once whole, as the recordings are
    shutil.rmtree(importing, ignore_errors=True)
    report = import_video(
        videos,
        importing,
        size=int(cfg.env.image_size),
        fps=None,
        camera=camera,
        cut_threshold=None,
        task=cfg.env.task_text,
    )
    if report[
        "skipped"
    ]:  # these files were written here: one that cannot be read is a broken setup, not bad luck
        raise DatasetError(
            f"{len(report['skipped'])} of the rendered videos could not be read back, e.g. "
            f"{report['skipped'][0]['source']}: {report['skipped'][0]['reason']}"
        )
    importing.rename(store)


def target_probe(checkpoints: dict, env_cfg, episodes: int = 300, seed: int = 50_000) -> dict[str, float]:
    """How much of the hidden target's position (x, y) a linear read-out of each encoder's features
    recovers: held-out R² on frames of noisy-expert episodes (the first 70 % fit, the rest scored),
    the frames rendered once for all. A checkpoint None probes a randomly initialized encoder, the floor."""
    import numpy as np
    import torch

    from robot_rl.factory import make_sim_env
    from robot_rl.learners.icvf import load_encoder_state
    from robot_rl.policies.encoders import CameraFeatures, images_to_float

    env, expert = make_sim_env(env_cfg, expert_noise=1.0, seed=seed)
    key = f"image/{env_cfg.cameras[0]}"
    frames, targets = [], []
    with env:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            for _ in range(3):
                frames.append(obs[key])
                targets.append(env.task.target[:2].copy())
                obs = env.step(expert())[0]
    images, y = images_to_float(np.stack(frames)), np.stack(targets)
    fit = np.arange(len(y)) < int(0.7 * len(y))
    scores = {}
    for name, checkpoint in checkpoints.items():
        torch.manual_seed(seed)
        encoder = CameraFeatures(1, int(env_cfg.image_size))
        if checkpoint is not None:
            encoder.load_state_dict(load_encoder_state(checkpoint)[0])
        with torch.no_grad():
            x = np.c_[encoder([images]).numpy(), np.ones(len(y))]
        w = np.linalg.lstsq(x[fit], y[fit], rcond=None)[0]
        error = ((x[~fit] @ w - y[~fit]) ** 2).sum()
        scores[name] = float(1.0 - error / ((y[~fit] - y[~fit].mean(0)) ** 2).sum())
    return scores


def run_seed(cfg, seed: int, run: Path) -> dict:
    from robot_rl.commands.train import train_icvf_learner, train_iql_learner

    start = time.monotonic()
    icvf = train_icvf_learner(cfg.icvf, cfg.video, run / "icvf", seed)
    iql = OmegaConf.merge(cfg.iql, {"agent": {"image_keys": [f"image/{c}" for c in cfg.env.cameras]}})
    variants = {
        "iql_scratch": {},
        "iql_icvf": {"encoder_init": icvf["checkpoint"]},
        "iql_icvf_frozen": {"encoder_init": icvf["checkpoint"], "encoder_freeze": True},
    }
    success = {
        name: train_iql_learner(OmegaConf.merge(iql, override), cfg.dataset, cfg.env, run / name, seed)[
            "evaluation"
        ]["success_rate"]
        for name, override in variants.items()
    }
    report = {
        "seed": seed,
        **{f"{k}_success": v for k, v in success.items()},
        "icvf_frozen_minus_scratch": success["iql_icvf_frozen"] - success["iql_scratch"],
        "target_probe_r2": target_probe({"icvf": icvf["checkpoint"], "random_init": None}, cfg.env),
        "icvf_seconds": icvf["seconds"],
        "seconds": time.monotonic() - start,
    }
    (run / "report.json").write_text(json.dumps(report, indent=2))
    return report


FIGURES = (
    Figure("iql_scratch_success", "IQL scratch"),
    Figure("iql_icvf_frozen_success", "IQL ICVF frozen"),
    Figure("icvf_frozen_minus_scratch", "frozen - scratch", "+.1%"),
    Figure("iql_icvf_success", "IQL ICVF fine-tuned"),
)


def vptr(cfg) -> SeedResults:
    from robot_rl.experiments.vlm_iql import mixed_data_seeds

    if not Path(cfg.video).exists():
        render_videos(cfg)
    return mixed_data_seeds(
        cfg,
        "vptr",
        run_seed,
        FIGURES,
        ("iql_scratch_success", "iql_icvf_success", "iql_icvf_frozen_success"),
        lambda r: r["icvf_frozen_minus_scratch"] > 0,
        video=str(cfg.video),
    )
