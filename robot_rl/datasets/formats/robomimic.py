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
is env_args' env_kwargs.control_freq (robosuite's name) both ways. The name helpers below are
shared with diffusion_policy.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from robot_rl.errors import ConfigError, DatasetError

REQUIRED = ("obs/state", "action")  # an import refuses a source without them, unless mapped to ""
FLOAT32_KEYS = ("obs/state", "action", "reward")  # float64 there becomes float32, as learners read it
FLAG_KEYS = ("terminated", "truncated", "intervened", "safety_hold")  # 0/1 there becomes bool


# --- key names (shared with diffusion_policy.py) ------------------------------------------------
def format_conf(fmt: str) -> dict:
    """The whole conf/formats/<fmt>.yaml (keys, and the format's other defaults)."""
    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "formats" / f"{fmt}.yaml"
    return yaml.safe_load(conf.read_text())


def _template(pattern: str, group: str = "camera") -> re.Pattern:
    """A regex for a name with {camera} / {index} placeholders."""
    out = re.escape(pattern)
    out = out.replace(re.escape("{camera}"), f"(?P<{group}>[^/]+?)").replace(
        re.escape("{index}"), r"(?P<index>\d+)"
    )
    return re.compile(f"^{out}$")


def export_names(keys: dict, store_keys: list[str], fallback, several: str | None = None) -> dict[str, str]:
    """Store key -> the format's name: an exact entry of `keys`, else a `{camera}` template (its name
    may hold {camera} and {index}, the camera's place among the store's matching keys, sorted),
    else `fallback(key)`. A name "" leaves the key out. A template name without a placeholder
    that several cameras match gives them `several` (e.g. camera_{index}), or is refused."""
    exact = {k: v for k, v in keys.items() if "{camera}" not in k}
    templates = [(k, v) for k, v in keys.items() if "{camera}" in k]
    names: dict[str, str] = {}
    matched: dict[str, list[tuple[str, str]]] = {}
    for key in store_keys:
        if key in exact:
            names[key] = exact[key]
            continue
        for store_template, _ in templates:
            m = _template(store_template).match(key)
            if m:
                matched.setdefault(store_template, []).append((key, m["camera"]))
                break
        else:
            names[key] = fallback(key)
    for store_template, cameras in matched.items():
        name = keys[store_template]
        if len(cameras) > 1 and name and "{" not in name:
            if several is None:
                raise ConfigError(
                    f"{len(cameras)} cameras ({', '.join(c for _, c in cameras)}) would all be written "
                    f"as {name}: give {store_template} a name with {{camera}}"
                )
            name = several
        for index, (key, camera) in enumerate(sorted(cameras)):
            names[key] = name.format(camera=camera, index=index)
    names = {k: v for k, v in names.items() if v != ""}
    joined = [k for k, v in names.items() if "+" in v]
    if joined:
        raise ConfigError(
            f"{joined[0]} is mapped to several names ({names[joined[0]]}): an export writes one, "
            f"give --key {joined[0]}=NAME"
        )
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            raise ConfigError(f"{seen[name]} and {key} would both be written as {name}")
        seen[name] = key
    return names


def import_names(
    keys: dict,
    defaults: dict,
    recorded: dict,
    present: dict[str, tuple],
    is_image,
    fallback,
    where: str,
    several: str | None = None,
) -> dict[str, list[str]]:
    """Store key -> the source names it is read from (several: concatenated along the last axis).

    `present` maps the source's names to their per-step shape; `recorded` is the store key -> name
    map an export wrote beside the data (it wins over the defaults, the --key overrides win over
    it). Names no entry claims keep their own name (`fallback(name)`, None: not a store key); a
    store key mapped to "" is left out, and a missing obs/state or action is refused."""
    overrides = {k: v for k, v in keys.items() if defaults.get(k) != v}
    if not isinstance(recorded, dict):
        recorded = {}
    recorded = {k: v for k, v in recorded.items() if isinstance(k, str) and isinstance(v, str)}
    effective = {**defaults, **recorded, **overrides}
    out: dict[str, list[str]] = {}
    claimed: dict[str, str] = {}

    def claim(key: str, parts: list[str]) -> None:
        for part in parts:
            if part in claimed:
                raise ConfigError(f"{where}: {part} is mapped to both {claimed[part]} and {key}")
            claimed[part] = key
        out[key] = parts

    for key, name in effective.items():
        if "{camera}" in key or name == "":
            continue
        parts = name.split("+")
        missing = [p for p in parts if p not in present]
        if not missing:
            claim(key, parts)
        elif key in REQUIRED or len(missing) < len(parts):
            listed = ", ".join(sorted(n for n in present if fallback(n) is not None)) or "none"
            raise DatasetError(
                f"{where} has no {missing[0]} for {key} (it has: {listed}); map one with "
                f"--key {key}=NAME (NAME+NAME joins several), or --key {key}= for a store without it"
            )
    templates = [(k, v) for k, v in effective.items() if "{camera}" in k and v]
    templates += [(k, several) for k, v in templates if several and "{" not in v]
    for name in sorted(present):
        if name in claimed:
            continue
        for store_template, name_template in templates:
            m = _template(name_template).match(name)
            if m and is_image(present[name]):
                camera = m.groupdict().get("camera") or name.replace("/", "_")
                key = store_template.format(camera=camera)
                break
        else:
            key = fallback(name)
        if key is None or effective.get(key) == "":
            continue
        if key in out:
            raise ConfigError(f"{where}: {out[key][0]} and {name} would both become the store's {key}")
        claim(key, [name])
    return out


def rate(value) -> float | None:
    """A frame rate from a dataset's metadata: a positive number, else None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def looks_like_image(shape: tuple) -> bool:
    """A per-step shape of an HWC image (uint8 or float 0-255 frames)."""
    return len(shape) == 3 and shape[-1] in (1, 3, 4)


def assemble(key: str, parts: list[np.ndarray], names: list[str], where: str) -> np.ndarray:
    """One store key's steps from its source arrays, in the store's conventions: images uint8 HWC,
    flags bool, obs/state / action / reward float32 (robomimic's and diffusion_policy's own readers
    cast to float32 too)."""
    if len(parts) > 1:
        parts = [p.reshape(len(p), -1) for p in parts]
        if any(p.dtype.kind not in "biuf" for p in parts):
            raise DatasetError(f"{where}: {'+'.join(names)} are not all numeric; cannot join them")
        value = np.concatenate([p.astype(np.result_type(*parts)) for p in parts], axis=1)
    else:
        value = np.asarray(parts[0])
    name = "+".join(names)
    if value.ndim == 0:
        raise DatasetError(f"{where}: {name} is one value, not one per step (--key {key}= leaves it out)")
    if value.dtype.kind not in "biuf":
        raise DatasetError(
            f"{where}: {name} holds {value.dtype} values, not numbers (--key {key}= leaves it out)"
        )
    if key.startswith("obs/image/"):
        if not looks_like_image(value.shape[1:]):
            raise DatasetError(f"{where}: {name} is {value.shape[1:]}, not an HWC image, so not {key}")
        if value.dtype != np.uint8:
            as_uint8 = value.astype(np.uint8)
            if value.min(initial=0) < 0 or value.max(initial=0) > 255 or not np.array_equal(as_uint8, value):
                raise DatasetError(
                    f"{where}: {name} is {value.dtype} but not whole numbers 0-255 (uint8 frames)"
                )
            value = as_uint8
    if key in FLAG_KEYS or key == "reward":
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
    if key in FLAG_KEYS and value.dtype != np.bool_:
        if not np.isin(value, (0, 1)).all():
            raise DatasetError(f"{where}: {name} holds values other than 0 and 1, so it is not {key}")
        value = value.astype(bool)
    if key in FLOAT32_KEYS and value.dtype == np.float64:
        value = value.astype(np.float32)
    return value


def episode_from(arrays: dict[str, list[str]], read, where: str) -> dict[str, np.ndarray]:
    """{store key: assembled steps} with `read(name)` giving one source array."""
    episode = {}
    for key, names in arrays.items():
        episode[key] = assemble(key, [np.asarray(read(n)) for n in names], names, where)
    lengths = {k: len(v) for k, v in episode.items()}
    ref = "action" if "action" in lengths else next(iter(lengths), None)
    odd = [k for k, n in lengths.items() if n != lengths[ref]]
    if odd:
        raise DatasetError(
            f"{where}: {'+'.join(arrays[odd[0]])} has {lengths[odd[0]]} steps, {'+'.join(arrays[ref])} "
            f"{lengths[ref]} (--key {odd[0]}= leaves it out)"
        )
    return episode


def progress_bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="episode", disable=not progress)


# --- robomimic -----------------------------------------------------------------------------------
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
    with h5py.File(out, "w") as f, progress_bar(store.n_episodes, "export robomimic", progress) as bar:
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
