"""diffusion_policy's zarr ReplayBuffer in and out of an EpisodeStore.

The layout diffusion_policy's ReplayBuffer reads (diffusion_policy/common/replay_buffer.py,
`ReplayBuffer.copy_from_path` / `create_from_path`, zarr 2):

    <name>.zarr/               zarr format 2 (.zgroup, .zarray, .zattrs)
      data/<key>               arrays concatenated over time: img / camera_<i> (uint8 HWC), state,
                               action, and any other per-step key; chunked along time only
      meta/episode_ends        int64, cumulative: episode i is data[ends[i-1]:ends[i]]
      .zattrs                  robot_rl: {keys, fps, task} (zarr 2 readers pass over it)

An export writes zarr format 2 (zarr 3's zarr_format=2) with numcodecs Blosc lz4 (the
ReplayBuffer's own default compressor), which every zarr 2 reader decodes. An import reads format 2
and 3 alike. The frame rate on import: the exported attributes, else the median step of
data/timestamp (diffusion_policy's real-robot recordings), else conf/formats/diffusion_policy.yaml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_rl.datasets.formats import format_conf
from robot_rl.datasets.formats.names import episode_from, export_names, import_names, looks_like_image, rate
from robot_rl.datasets.store import _first_line
from robot_rl.errors import ConfigError, DatasetError

TARGET_CHUNK_BYTES = 2_000_000  # the ReplayBuffer's own target (get_optimal_chunks)
IN_MEMORY_BYTES = 64 << 20  # smaller arrays are read once, not once per episode


def _register_image_codecs() -> None:
    """diffusion_policy's real-robot datasets compress frames with imagecodecs' JPEG 2000: its
    numcodecs codecs are registered when imagecodecs is installed."""
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return
    register_codecs()


def _name_out(key: str) -> str:
    """A store key no entry names: obs/<x> -> x, other slashes -> _ (data holds arrays only: a
    nested group would stop the ReplayBuffer)."""
    return (key[4:] if key.startswith("obs/") else key).replace("/", "_")


def _arrays(group, prefix: str = "") -> dict:
    out = {}
    for name, item in group.members():
        if hasattr(item, "shape"):
            out[f"{prefix}{name}"] = item
        else:
            out.update(_arrays(item, f"{prefix}{name}/"))
    return out


def read(src, keys: dict, fps: float | None = None):
    """(episodes, meta) of a ReplayBuffer zarr: one episode per meta/episode_ends entry. `fps`
    overrides what the dataset says and the default."""
    import zarr

    src = Path(src)
    conf = format_conf("diffusion_policy")
    _register_image_codecs()
    try:
        root = zarr.open_group(str(src), mode="r")
        data, ends = root["data"], root["meta/episode_ends"]
        arrays = _arrays(data)
        ends = np.asarray(ends[:])
        attrs = dict(root.attrs).get("robot_rl")
    except KeyError as exc:
        raise DatasetError(f"{src} is not a diffusion_policy ReplayBuffer (no {exc.args[0]})") from None
    except Exception as exc:  # zarr raises many kinds for what is not a zarr store
        raise DatasetError(f"{src} is not a readable zarr ReplayBuffer ({_first_line(exc)})") from None
    if (
        ends.ndim != 1
        or ends.dtype.kind not in "iu"
        or (len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)))
    ):
        raise DatasetError(f"{src}: meta/episode_ends is not increasing episode ends")
    steps = int(ends[-1]) if len(ends) else 0
    short = [n for n, a in arrays.items() if a.ndim == 0 or a.shape[0] < steps]
    if short:
        raise DatasetError(f"{src}: data/{short[0]} is shorter than meta/episode_ends ({steps} steps)")
    present = {n: a.shape[1:] for n, a in arrays.items()}
    where = str(src)
    attrs = attrs if isinstance(attrs, dict) else {}
    recorded = attrs.get("keys", {})
    mapping = import_names(
        keys, conf["keys"], recorded, present, looks_like_image, lambda n: n, where, conf["several_cameras"]
    )
    frame_rate = fps or rate(attrs.get("fps")) or _timestamp_fps(arrays, ends) or conf["fps"]
    task = attrs.get("task") if isinstance(attrs.get("task"), str) else None
    meta = {"fps": float(frame_rate), "task": task, "episodes": len(ends)}

    def whole(name: str):
        array = arrays[name]
        try:
            if array.nbytes <= IN_MEMORY_BYTES:
                return np.asarray(array[:steps])
        except Exception as exc:
            raise _unreadable(src, name, exc) from None
        return array

    sources = {name: whole(name) for names in mapping.values() for name in names}

    def episodes():
        start = 0
        for index, end in enumerate(ends.tolist()):

            def read_steps(name: str, lo=start, hi=end):
                try:
                    return sources[name][lo:hi]
                except Exception as exc:
                    raise _unreadable(src, name, exc) from None

            yield episode_from(mapping, read_steps, f"{where} episode {index}")
            start = end

    return episodes(), meta


def _unreadable(src, name: str, exc: BaseException) -> DatasetError:
    return DatasetError(
        f"{src}: cannot read data/{name} ({_first_line(exc)}); diffusion_policy's real-robot frames "
        "are JPEG 2000: pip install imagecodecs"
    )


def _timestamp_fps(arrays: dict, ends: np.ndarray) -> float | None:
    """The rate of data/timestamp (seconds) over the first episode, if the dataset has one."""
    stamps = arrays.get("timestamp")
    if stamps is None or stamps.ndim != 1 or not len(ends) or ends[0] < 2:
        return None
    step = float(np.median(np.diff(np.asarray(stamps[: int(ends[0])], dtype=np.float64))))
    return rate(round(1.0 / step, 3)) if step > 0 else None


def write(store, out, keys: dict, progress: bool = True) -> dict:
    """The store as a ReplayBuffer zarr (format 2) at `out` (a new folder)."""
    import numcodecs
    import zarr
    from tqdm import tqdm

    conf = format_conf("diffusion_policy")
    names = export_names(keys, store.keys, _name_out, several=conf["several_cameras"])
    bad = [k for k, v in names.items() if "/" in v or v.startswith(".")]
    if bad:
        raise ConfigError(f"{bad[0]} cannot be written as {names[bad[0]]}: data holds arrays, not folders")
    if store.n_episodes == 0:
        raise DatasetError(f"{store.path} holds no episodes")
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    n = store.n_steps
    root = zarr.open_group(str(out), mode="w", zarr_format=2)
    data = root.require_group("data")
    plan = []
    for key, name in names.items():
        spec = store.schema[key]
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        step_bytes = max(1, int(np.prod(shape, dtype=int)) * dtype.itemsize)
        chunk = int(np.clip(TARGET_CHUNK_BYTES // step_bytes, 1, n))
        array = data.create_array(
            name, shape=(n, *shape), chunks=(chunk, *shape), dtype=dtype, compressors=compressor, fill_value=0
        )
        plan += [(key, array, lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    meta = root.require_group("meta")
    ends = store.episode_ends.astype(np.int64)
    episode_ends = meta.create_array(
        "episode_ends", shape=ends.shape, chunks=ends.shape, dtype=np.int64, compressors=None, fill_value=0
    )
    for key, array, lo, hi in tqdm(plan, desc="export diffusion_policy", unit="chunk", disable=not progress):
        array[lo:hi] = store.array(key)[lo:hi]
    episode_ends[:] = ends
    root.attrs["robot_rl"] = {
        "keys": names,
        "fps": store.fps,
        "task": store.attrs.get("task"),
        "store": str(store.path),
    }
    return {"episodes": store.n_episodes, "steps": n, "keys": names}
