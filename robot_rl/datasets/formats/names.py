"""Store keys <-> a dataset format's names, shared by the format modules (robomimic.py,
diffusion_policy.py; lerobot.py matches its `{camera}` names with `template`).

`keys` (conf/formats/<format>.yaml, then the --key overrides) maps a store key to a format's name:
`obs/image/{camera}` stands for any camera (its name may hold {camera}, and {index}: the camera's
place among the store's, sorted), NAME+NAME on import joins several source arrays into one store
key, and "" leaves a key out. `assemble` turns the source arrays into a store key's steps, in the
store's conventions.
"""

from __future__ import annotations

import re

import numpy as np

from robot_rl.errors import ConfigError, DatasetError

REQUIRED = ("obs/state", "action")  # an import refuses a source without them, unless mapped to ""
FLOAT32_KEYS = ("obs/state", "action", "reward")  # float64 there becomes float32, as learners read it
FLAG_KEYS = ("terminated", "truncated", "intervened", "safety_hold")  # 0/1 there becomes bool


def template(pattern: str, index: bool = True) -> re.Pattern:
    """A regex for a name with a {camera} placeholder (group "camera": one or more characters, no
    "/") and, with `index`, an {index} one (group "index": digits); a placeholder that stands again
    stands for the same text, and the rest matches literally."""
    out = re.escape(pattern)
    places = {"camera": "[^/]+?", "index": r"\d+"} if index else {"camera": "[^/]+?"}
    for group, text in places.items():
        out = out.replace(re.escape(f"{{{group}}}"), f"(?P<{group}>{text})", 1)
        out = out.replace(re.escape(f"{{{group}}}"), f"(?P={group})")
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
            m = template(store_template).match(key)
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
            m = template(name_template).match(name)
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
