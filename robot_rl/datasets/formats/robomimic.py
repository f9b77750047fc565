"""robomimic HDF5 datasets in and out of an EpisodeStore.

The layout robomimic's `SequenceDataset` reads (robomimic docs/datasets/overview.md; written as
robomimic's scripts/dataset_states_to_obs.py and scripts/conversion/convert_d4rl.py write it):

    data                  attrs: total (steps), env_args (JSON: env_name, type, env_kwargs)
      demo_<i>            attrs: num_samples; ep_meta (JSON, {"lang": task}, as robocasa writes it)
        obs/<key>         one dataset per observation key: obs/state, obs/<camera>_image (uint8 HWC)
        next_obs/<key>    the observations one step later, the last one repeated (convert_d4rl's way)
        actions (N, A), rewards (N,), dones (N,) int: 1 where the episode terminated
        <other>           any other per-step key of the store, under its own name

`keys` (conf/formats/robomimic.yaml) maps store keys to paths inside a demo group. The frame rate
is env_args' env_kwargs.control_freq (robosuite's name) both ways. The key mapping is names.py's,
shared with diffusion_policy.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from robot_rl.datasets.formats import format_conf
from robot_rl.datasets.formats.names import episode_from, export_names, import_names, looks_like_image, rate
from robot_rl.errors import ConfigError, DatasetError


def _h5py():
    from robot_rl.errors import require

    return require("h5py", "formats", "robomimic HDF5 datasets")


def _name_out(key: str) -> str:
    """A store key no entry names: obs/<x> stays an observation (one level: obs/a/b -> obs/a_b),
    anything else keeps its path in the demo group."""
    if key.startswith("obs/"):
        return "obs/" + key[4:].replace("/", "_")
    if key.split("/")[0] in ("obs", "next_obs"):
        raise ConfigError(f"{key} cannot be a robomimic key: name it with --key {key}=NAME")
    return key


def _name_in(name: str) -> str | None:
    return None if name.startswith("next_obs/") else name


def _demos(data, where: str) -> list[str]:
    demos = [k for k in data if re.fullmatch(r"demo_\d+", k)]
    if not demos:
        raise DatasetError(f"{where} has no demo_<i> groups under data")
    return sorted(demos, key=lambda d: int(d[5:]))


def _datasets(group, prefix: str = "") -> dict:
    """path -> h5py dataset, every dataset under `group` (recursively)."""
    out = {}
    for name, item in group.items():
        path = f"{prefix}{name}"
        if hasattr(item, "shape"):
            out[path] = item
        else:
            out.update(_datasets(item, f"{path}/"))
    return out


def _json_attr(attrs, name: str, where: str):
    raw = attrs.get(name)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, AttributeError):
        raise DatasetError(f"{where}: the {name} attribute is not JSON") from None


def read(src, keys: dict, fps: float | None = None):
    """(episodes, meta) of a robomimic HDF5 file: one episode per demo_<i>, in robomimic's order
    (by i). `fps` overrides env_args' control_freq and the default in conf/formats/robomimic.yaml."""
    h5py = _h5py()
    src = Path(src)
    conf = format_conf("robomimic")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise DatasetError(f"{src} is not an HDF5 file ({str(exc).splitlines()[0]})") from None
    try:
        if "data" not in f or hasattr(f["data"], "shape"):
            raise DatasetError(f"{src} is not a robomimic dataset (no data group)")
        data = f["data"]
        demos = _demos(data, str(src))
        env_args = _json_attr(data.attrs, "env_args", str(src))
        recorded = _json_attr(data.attrs, "robot_rl", str(src))
        recorded = recorded.get("keys", {}) if isinstance(recorded, dict) else {}
        first = data[demos[0]]
        present = {p: d.shape[1:] for p, d in _datasets(first).items()}
        arrays = import_names(
            keys, conf["keys"], recorded, present, looks_like_image, _name_in, f"{src} {demos[0]}"
        )
        env_kwargs = env_args.get("env_kwargs") if isinstance(env_args, dict) else None
        control_freq = rate(env_kwargs.get("control_freq")) if isinstance(env_kwargs, dict) else None
        frame_rate = float(fps or control_freq or conf["fps"])
        ep_metas = [_json_attr(data[d].attrs, "ep_meta", str(src)) for d in demos]
        tasks = {m.get("lang") if isinstance(m, dict) else None for m in ep_metas}
    except BaseException:
        f.close()
        raise
    task = tasks.pop() if len(tasks) == 1 else None  # the store holds one task: none when they differ
    meta = {"fps": frame_rate, "task": task if isinstance(task, str) else None, "episodes": len(demos)}

    def episodes():
        with f:
            for demo in demos:
                group = data[demo]
                where = f"{src} {demo}"
                missing = [n for names in arrays.values() for n in names if n not in group]
                if missing:
                    raise DatasetError(f"{where} has no {missing[0]} (the first demo has)")
                n = group.attrs.get("num_samples")
                if n is not None and int(n) == 0:
                    continue  # an empty demo: no steps to keep
                episode = episode_from(arrays, lambda name, g=group: g[name][()], where)
                steps = len(next(iter(episode.values())))
                if n is not None and steps != int(n):
                    raise DatasetError(f"{where}: num_samples is {int(n)} but the data holds {steps} steps")
                yield episode

    return episodes(), meta


def write(store, out, keys: dict, progress: bool = True) -> dict:
    """The store as a robomimic HDF5 file at `out` (a new file)."""
    from tqdm import tqdm

    h5py = _h5py()
    names = export_names(keys, store.keys, _name_out)
    for key, name in names.items():
        parts = name.split("/")
        if parts[0] == "next_obs" or (parts[0] == "obs" and len(parts) != 2) or name.endswith("/"):
            raise ConfigError(f"{key} cannot be written as {name}: observations are obs/<name>, one level")
    if store.n_episodes == 0:
        raise DatasetError(f"{store.path} holds no episodes")
    if "action" not in names:
        raise DatasetError(
            f"{store.path} has no action key: robomimic datasets are (observation, action) pairs"
        )
    obs = [k for k, v in names.items() if v.startswith("obs/")]
    images = set(store.image_keys())
    env_args = {
        "env_name": str(store.attrs.get("env") or store.path.stem),
        "type": 2,  # robomimic's EnvType.GYM_TYPE: not a robosuite env (rollouts need robot_rl's env)
        "env_kwargs": {"control_freq": store.fps},
    }
    task = store.attrs.get("task")
    with (
        h5py.File(out, "w") as f,
        tqdm(total=store.n_episodes, desc="export robomimic", unit="episode", disable=not progress) as bar,
    ):
        data = f.create_group("data")
        for index in range(store.n_episodes):
            episode = store.episode(index, list(names))
            group = data.create_group(f"demo_{index}")
            n = len(episode["action"])
            group.attrs["num_samples"] = n
            if task:
                group.attrs["ep_meta"] = json.dumps({"lang": task})
            for key, name in names.items():
                value = episode[key]
                if key == "terminated" and name == "dones":
                    value = value.astype(np.int64)  # robomimic's dones are ints
                gzip = {"compression": "gzip", "compression_opts": 4} if key in images else {}
                group.create_dataset(name, data=value, **gzip)
                if key in obs:  # s' of each step: the next step's observation, the last repeated
                    following = np.concatenate([value[1:], value[-1:]]) if n else value
                    group.create_dataset(f"next_{name}", data=following, **gzip)
            bar.update(1)
        data.attrs["total"] = store.n_steps
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["robot_rl"] = json.dumps({"keys": names, "store": str(store.path)})
    return {"episodes": store.n_episodes, "steps": store.n_steps, "keys": names}
