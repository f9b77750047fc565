"""Render one episode of a store: camera video (mp4 or GIF) and a PNG plot of state and action."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_rl.datasets.store import EpisodeStore
from robot_rl.errors import DatasetError
from robot_rl.utils.video import write_video


def _side_by_side(frames: list[np.ndarray], scale: int) -> np.ndarray:
    height = max(f.shape[1] for f in frames)
    padded = [np.pad(f, ((0, 0), (0, height - f.shape[1]), (0, 0), (0, 0))) for f in frames]
    video = np.concatenate(padded, axis=2)
    if video.shape[-1] == 1:
        video = np.repeat(video, 3, axis=-1)
    return np.repeat(np.repeat(video, scale, axis=1), scale, axis=2)


def plot_episode(
    episode: dict[str, np.ndarray], path: Path, title: str, fps: float, state_names=None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        k
        for k, v in episode.items()
        if v.ndim <= 2 and v.dtype.kind in "fiub" and not k.startswith("obs/image")
    ]
    flags = [k for k in series if episode[k].dtype == bool]
    curves = [k for k in series if k not in flags]
    steps = len(next(iter(episode.values())))
    t = np.arange(steps) / (fps or 1.0)
    rows = len(curves) + (1 if flags else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.2 * rows), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, key in zip(axes, curves):
        values = episode[key].reshape(steps, -1)
        names = (
            state_names
            if key == "obs/state" and state_names and len(state_names) == values.shape[1]
            else None
        )
        for d in range(values.shape[1]):
            label = (names[d] if names else f"{d}") if values.shape[1] > 1 else None
            ax.plot(t, values[:, d], lw=1.2, label=label)
        ax.set_ylabel(key, rotation=0, ha="right", va="center")
        if 1 < values.shape[1] <= 12:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6)
        ax.grid(alpha=0.3)
    if flags:
        ax = axes[-1]
        for i, key in enumerate(flags):
            on = episode[key].astype(bool).ravel()
            ax.scatter(t[on], np.full(on.sum(), i), marker="|", s=200)
        ax.set_yticks(np.arange(len(flags)), flags)
        ax.set_ylim(-0.5, len(flags) - 0.5)
    axes[-1].set_xlabel("time (s)" if fps else "step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def show_episode(store_path, episode: int, out_dir, video_format: str = "mp4", scale: int = 3) -> list[Path]:
    if video_format not in ("mp4", "gif"):
        raise DatasetError(f"video format must be mp4 or gif, got {video_format!r}")
    store = EpisodeStore.open(store_path)
    data = store.episode(episode)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{store.path.stem}_episode{episode % max(store.n_episodes, 1)}"
    written = []
    images = store.image_keys()
    if images:
        video = _side_by_side([data[k] for k in images], scale)
        written.append(write_video(video, out_dir / f"{stem}.{video_format}", store.fps or 10.0))
    title = f"{store.path.name} episode {episode}: {len(next(iter(data.values())))} steps"
    written.append(
        plot_episode(data, out_dir / f"{stem}.png", title, store.fps, store.attrs.get("state_names"))
    )
    return written
