"""Other projects' dataset formats in and out of an EpisodeStore: LeRobotDataset v3.0 (parquet +
mp4), robomimic HDF5 and diffusion_policy's zarr ReplayBuffer.

Each format module offers `read(src, keys) -> (episodes, meta)`, an iterator of episodes in the
store's keys with {"fps", "task", ...}, and `write(store, out, keys, progress)`. `keys` maps the
store's keys to the format's (its defaults: conf/formats/<format>.yaml, `{camera}` standing for a
camera name); what a format holds that the mapping cannot place is refused in one line.
"""

from __future__ import annotations

import importlib

FORMATS = ("lerobot", "robomimic", "diffusion_policy")


def _known(fmt: str) -> None:
    from robot_rl.errors import ConfigError

    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r} ({', '.join(FORMATS)})")


def _module(fmt: str):
    _known(fmt)
    return importlib.import_module(f"robot_rl.datasets.formats.{fmt}")


def format_conf(fmt: str) -> dict:
    """The whole conf/formats/<format>.yaml: its keys and the format's other defaults (fps, ...)."""
    from pathlib import Path

    import yaml

    _known(fmt)
    conf = Path(__file__).resolve().parents[2] / "conf" / "formats" / f"{fmt}.yaml"
    return yaml.safe_load(conf.read_text())


def default_keys(fmt: str) -> dict[str, str]:
    """The format's conventional names for the store's keys (conf/formats/<format>.yaml)."""
    return dict(format_conf(fmt)["keys"])


def _keys(fmt: str, overrides: dict | None) -> dict[str, str]:
    return {**default_keys(fmt), **(overrides or {})}


def _building(out, what: str) -> tuple:
    """(out, the hidden path beside it that an import or export is built in and renamed from; what
    a killed one left there is removed)."""
    import os
    from pathlib import Path

    from robot_rl.datasets.store import remove_dead_leftovers
    from robot_rl.errors import DatasetError

    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(out)
    return out, out.with_name(f".{out.name}.{what}-{os.getpid()}")


def import_dataset(
    src,
    out,
    fmt: str,
    keys: dict | None = None,
    progress: bool = True,
    fps: float | None = None,
    camera_codec: str | None = None,
) -> dict:
    """A dataset in format `fmt` at `src` into a new EpisodeStore at `out` (built beside it and
    renamed when whole: a failed or killed import leaves nothing at `out`); `fps` where the
    dataset does not say its rate (or says it wrong). Cameras are stored as `camera_codec`
    (EpisodeStore's video or blosc; default: video for a format that holds video, LeRobot's)."""
    import os
    import shutil
    from pathlib import Path

    from tqdm import tqdm

    from robot_rl.datasets.store import EpisodeStore, with_camera_codec
    from robot_rl.errors import DatasetError

    module = _module(fmt)
    codec = camera_codec or getattr(module, "CAMERA_CODEC", "blosc")
    with_camera_codec({}, codec)  # an unknown codec: refused before any work
    if not Path(src).exists():
        raise DatasetError(f"no {fmt} dataset at {src}")
    out, building = _building(out, "importing")
    episodes, meta = module.read(src, _keys(fmt, keys), fps=fps)
    store = None
    try:
        bar = tqdm(
            episodes, total=meta.get("episodes"), desc=f"import {fmt}", unit="episode", disable=not progress
        )
        for episode in bar:
            if store is None:
                schema = with_camera_codec({k: (v.shape[1:], v.dtype) for k, v in episode.items()}, codec)
                attrs = {"source": f"{fmt}:{Path(src).resolve()}", "task": meta.get("task")}
                store = EpisodeStore.create(building, schema, fps=float(meta["fps"]), attrs=attrs)
            store.append_episode(episode)
        if store is None:
            raise DatasetError(f"{src} holds no episodes")
        info = {k: v for k, v in store.info().items() if k != "path"}
        store.close()
        os.rename(building, out)
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(building, ignore_errors=True)
    return {"store": str(out), "format": fmt, **info}


def export_dataset(store_path, out, fmt: str, keys: dict | None = None, progress: bool = True) -> dict:
    """An EpisodeStore into a dataset in format `fmt` at `out` (built beside it and renamed when
    whole)."""
    import os
    import shutil

    from robot_rl.datasets.store import EpisodeStore

    module = _module(fmt)
    out, building = _building(out, "exporting")
    try:
        with EpisodeStore.open(store_path) as store:
            written = module.write(store, building, _keys(fmt, keys), progress)
        os.rename(building, out)
    finally:
        if building.is_dir():
            shutil.rmtree(building, ignore_errors=True)
        else:
            building.unlink(missing_ok=True)
    return {"out": str(out), "format": fmt, **(written or {})}
