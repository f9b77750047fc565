"""`robot-rl label vlm`: a thin function from the config to the labeler and its backend."""

from __future__ import annotations

import contextlib
from pathlib import Path

from robot_rl.errors import ConfigError, DatasetError


def labels_path(cfg) -> Path:
    """The labels file: `out`, or labels/<store name>.json."""
    return Path(cfg.out or Path("labels") / f"{Path(str(cfg.store)).stem}.json")


def label_vlm(cfg, progress: bool = True) -> dict:
    from robot_rl.labeling.vlm import OpenAIChatBackend, PairConfig, TransformersBackend, label_store

    if not cfg.store:
        raise ConfigError("label vlm needs store=PATH (an EpisodeStore with camera frames)")
    if not Path(cfg.store).exists():
        raise DatasetError(f"no episode store at {cfg.store}")
    pairs = PairConfig(
        pairs=int(cfg.pairs),
        image_key=str(cfg.image_key),
        segment=int(cfg.segment),
        near_end=float(cfg.near_end),
        seed=int(cfg.seed),
    )
    out = labels_path(cfg)
    b = cfg.backend
    with contextlib.ExitStack() as stack:
        if b.kind == "transformers":
            if not b.path:
                raise ConfigError(
                    "backend.kind=transformers needs backend.path=FOLDER (a local vision-language model)"
                )
            backend, model = TransformersBackend(str(b.path)), Path(str(b.path)).name
        elif b.kind in ("http", "sim"):
            base_url, model = str(b.base_url), str(b.model)
            if b.kind == "sim":
                from robot_rl.sim.vlm_oracle import sim_vlm_for_store

                server = stack.enter_context(
                    sim_vlm_for_store(
                        cfg.store, pairs.image_key, pairs.segment, wrong=float(b.wrong), seed=int(cfg.seed)
                    )
                )
                base_url, model = server.base_url, server.model
            backend = OpenAIChatBackend(
                base_url,
                model,
                api_key_env=b.api_key_env,
                timeout_s=float(b.timeout_s),
                retries=int(b.retries),
                backoff_s=float(b.backoff_s),
                max_retry_after_s=float(b.max_retry_after_s),
                seed=int(cfg.seed),
            )
        else:
            raise ConfigError(f"backend.kind must be http, transformers or sim, got {b.kind!r}")
        result = label_store(
            cfg.store,
            out,
            backend,
            pairs,
            model,
            cache_path=cfg.cache,
            max_concurrency=int(cfg.max_concurrency),
            progress=progress,
            max_consecutive_failures=int(cfg.max_consecutive_failures),
            max_failed_share=float(cfg.max_failed_share),
        )
    return {**result, "out": str(out)}
