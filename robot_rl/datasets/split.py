"""SS-ORL's benchmark split of a store: a few episodes keep their actions, the rest lose them.

The labeled share is drawn from the lower-return episodes (SS-ORL: 10 % of the trajectories,
from the lowest-return 50 %), so the inverse-dynamics model learns from poor data and the
action-free part holds the good trajectories whose actions it has to recover.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_rl.errors import ConfigError, DatasetError

SKIPPED_ATTRS = ("format", "schema", "stats_accumulators", "created")


def split_action_free(
    src,
    labeled_out,
    unlabeled_out,
    fraction: float = 0.1,
    lowest: float = 0.5,
    reward_key: str = "reward",
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write `labeled_out` (a `fraction` of all episodes, drawn from the `lowest` share by return,
    every key) and `unlabeled_out` (every other episode, no `action`)."""
    from robot_rl.datasets.store import EpisodeStore

    if not 0.0 < fraction <= lowest <= 1.0:
        raise ConfigError(f"need 0 < fraction <= lowest <= 1, got fraction {fraction}, lowest {lowest}")
    with EpisodeStore.open(src) as store:
        for key in ("action", reward_key):
            if key not in store.keys:
                raise DatasetError(f"{src} has no {key!r} (keys: {', '.join(store.keys)})")
        n = store.n_episodes
        rewards = np.asarray(store.array(reward_key)[: store.n_steps], np.float64)
        returns = (
            np.add.reduceat(rewards, np.concatenate([[0], store.episode_ends[:-1]])) if n else np.zeros(0)
        )
        count = int(round(fraction * n))
        if count < 2 or count == n:
            raise DatasetError(
                f"{src}: {fraction:.0%} of {n} episodes leaves {count} labeled; "
                "need at least 2 and fewer than all"
            )
        rng = np.random.default_rng(seed)
        pool = np.argsort(returns, kind="stable")[: max(count, int(round(lowest * n)))]
        labeled = set(rng.choice(pool, count, replace=False).tolist())
        attrs = {k: v for k, v in store.attrs.items() if k not in SKIPPED_ATTRS}
        schema = {k: (s["shape"], s["dtype"]) for k, s in store.schema.items()}
        provenance = {
            "split_of": str(src),
            "split": f"{fraction:g} labeled from the lowest {lowest:g} by {reward_key}",
            "split_seed": seed,
        }
        outs = {}
        for path, keep, keys in (
            (labeled_out, True, list(schema)),
            (unlabeled_out, False, [k for k in schema if k != "action"]),
        ):
            with EpisodeStore.create(
                path,
                {k: schema[k] for k in keys},
                fps=store.fps,
                attrs={**attrs, **provenance},
                overwrite=overwrite,
            ) as out:
                for e in range(n):
                    if (e in labeled) == keep:
                        out.append_episode({k: np.asarray(v) for k, v in store.episode(e, keys).items()})
                outs[str(Path(path))] = out.n_episodes
    return {
        "source": str(src),
        "episodes": n,
        "labeled": outs[str(Path(labeled_out))],
        "unlabeled": outs[str(Path(unlabeled_out))],
        "labeled_mean_return": float(returns[sorted(labeled)].mean()),
        "mean_return": float(returns.mean()),
    }
