"""`robot-rl bench store`: episode write and window sampling throughput of the EpisodeStore.

Data as in the reference measurements (docs/benchmarks.md): episodes of 200 steps with two 84x84x3
uint8 cameras, state 9 and action 7 float32. Images are real MuJoCo renders of the reach arm (a pool
of frames from scripted reaches, cut into episodes), so compression behaves as on simulated camera
data. Windows of 16 steps (pad 1 before, 7 after) at random indices, single process, store on disk.
Baselines in the same run: writing with plain zarr (default codec, automatic chunks) and reading the
same windows through plain zarr slicing of the same store. The cost of integrity: the same store
without CRC-32C checksums, written and sampled (first pass) in the same run, best of three
alternating repeats, and the time `EpisodeStore.open` takes to check the metadata and that every
chunk is on disk. Camera-like images: the same renders with Gaussian sensor noise (std 4 grey
levels, as a real camera's), stored with Blosc and as video (`codec: video`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from robot_rl.datasets import EpisodeStore, WindowSampler
from robot_rl.datasets.store import IMAGE_BLOSC, with_camera_codec

HORIZON, N_OBS, N_ACTION = 16, 2, 8  # pad_before 1, pad_after 7


def render_frame_pool(n_frames: int, size: int = 84, seed: int = 0) -> dict[str, np.ndarray]:
    """Frames of both cameras while the scripted expert reaches for random targets."""
    from robot_rl.sim.reach import ReachExpert, make_reach_env

    env = make_reach_env(cameras=("front", "top"), image_size=size)
    expert = ReachExpert(env.task, noise=0.3, seed=seed)
    frames = {"front": [], "top": []}
    episode = 0
    with env:
        obs, _ = env.reset(seed=seed)
        while len(frames["front"]) < n_frames:
            for cam in frames:
                frames[cam].append(obs[f"image/{cam}"])
            obs, _, terminated, truncated, _ = env.step(expert())
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=seed + episode)
    return {cam: np.stack(f) for cam, f in frames.items()}


def make_episodes(pool: dict[str, np.ndarray], n_episodes: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = len(pool["front"])
    for _ in range(n_episodes):
        start = int(rng.integers(0, n - length))
        yield {
            "obs/state": rng.normal(size=(length, 9)).astype(np.float32),
            "obs/image/front": pool["front"][start : start + length],
            "obs/image/top": pool["top"][start : start + length],
            "action": rng.uniform(-1, 1, size=(length, 7)).astype(np.float32),
        }


def write_ours(
    path: Path, episodes: list[dict], checksums: bool = True, camera_codec: str = "blosc"
) -> float:
    schema = with_camera_codec({k: (v.shape[1:], v.dtype) for k, v in episodes[0].items()}, camera_codec)
    start = time.perf_counter()
    with EpisodeStore.create(path, schema, fps=10, overwrite=True, checksums=checksums) as store:
        for ep in episodes:
            store.append_episode(ep)
    return time.perf_counter() - start


def write_plain_zarr(path: Path, episodes: list[dict]) -> float:
    """What a user gets appending to zarr arrays with zarr's defaults."""
    start = time.perf_counter()
    root = zarr.open_group(str(path), mode="w")
    arrays = {
        k: root.create_array(
            k.replace("/", "_"),
            shape=(0, *v.shape[1:]),
            dtype=v.dtype,
            chunks=(max(1, 2**20 // max(1, v[0].nbytes)), *v.shape[1:]),
        )
        for k, v in episodes[0].items()
    }
    ends = root.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(1024,))
    n = 0
    for ep in episodes:
        length = len(next(iter(ep.values())))
        for k, v in ep.items():
            arrays[k].resize((n + length, *v.shape[1:]))
            arrays[k][n : n + length] = v
        n += length
        ends.append(np.array([n]))
    return time.perf_counter() - start


def plain_zarr_window(arrays: dict, row, horizon: int, n_obs: int, obs_keys) -> dict:
    """The same window as WindowSampler[i], read by slicing zarr arrays directly."""
    buffer_start, buffer_end, sample_start, sample_end = (int(x) for x in row)
    out = {}
    for key, array in arrays.items():
        data = array[buffer_start:buffer_end]
        if sample_start > 0 or sample_end < horizon:
            data = np.concatenate(
                [np.repeat(data[:1], sample_start, 0), data, np.repeat(data[-1:], horizon - sample_end, 0)]
            )
        out[key] = data[:n_obs] if key in obs_keys else data
    return out


def windows_per_second(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def run(quick: bool = False) -> dict:
    n_episodes, length = (10, 100) if quick else (100, 200)
    n_image_windows, n_state_windows = (300, 3000) if quick else (3000, 30000)
    pool = render_frame_pool(min(3000, n_episodes * length // 2 + length + 1))
    episodes = list(make_episodes(pool, n_episodes, length))
    raw_bytes = sum(v.nbytes for ep in episodes for v in ep.values())
    image_raw = sum(ep[k].nbytes for ep in episodes for k in ("obs/image/front", "obs/image/top"))
    steps = n_episodes * length
    tmp = Path(tempfile.mkdtemp(prefix="robot_rl_bench_"))
    try:
        ours_s = write_ours(tmp / "ours.zarr", episodes)
        plain_s = write_plain_zarr(tmp / "plain.zarr", episodes)
        store = EpisodeStore.open(tmp / "ours.zarr")
        ours_images_disk = sum(
            f.stat().st_size
            for k in ("front", "top")
            for f in (tmp / "ours.zarr/data/obs/image" / k).rglob("*")
            if f.is_file()
        )
        plain_images_disk = sum(
            f.stat().st_size
            for k in ("front", "top")
            for f in (tmp / f"plain.zarr/obs_image_{k}").rglob("*")
            if f.is_file()
        )
        results = {
            "data": {
                "episodes": n_episodes,
                "steps_per_episode": length,
                "cameras": "2 x 84x84x3 uint8",
                "state": 9,
                "action": 7,
                "raw_mb": raw_bytes / 1e6,
            },
            "write": {
                "ours_steps_per_s": steps / ours_s,
                "ours_mb_per_s": raw_bytes / 1e6 / ours_s,
                "ours_image_compression": image_raw / ours_images_disk,
                "plain_zarr_steps_per_s": steps / plain_s,
                "plain_zarr_mb_per_s": raw_bytes / 1e6 / plain_s,
                "plain_zarr_image_compression": image_raw / plain_images_disk,
                "ratio": plain_s / ours_s,
            },
            "sample": {},
        }
        rng = np.random.default_rng(0)
        for name, obs_keys, n in (
            ("state", ["obs/state"], n_state_windows),
            ("images", ["obs/state", "obs/image/front", "obs/image/top"], n_image_windows),
        ):
            sampler = WindowSampler(store, HORIZON, N_OBS, N_ACTION, obs_keys=obs_keys)
            order = rng.integers(0, len(sampler), size=n)
            cold = windows_per_second(lambda i, sampler=sampler, order=order: sampler[order[i]], n)
            warm = windows_per_second(lambda i, sampler=sampler, order=order: sampler[order[i]], n)
            arrays = {k: store.array(k) for k in obs_keys + ["action"]}
            plain = windows_per_second(
                lambda i, arrays=arrays, sampler=sampler, order=order, obs_keys=obs_keys: plain_zarr_window(
                    arrays, sampler.indices[order[i]], HORIZON, N_OBS, obs_keys
                ),
                n,
            )
            results["sample"][name] = {
                "windows": n,
                "ours_first_pass_per_s": cold,
                "ours_warm_per_s": warm,
                "plain_zarr_per_s": plain,
                "ratio_first_pass": cold / plain,
                "ratio_warm": warm / plain,
            }
        results["checksums"] = checksum_cost(tmp, episodes, n_image_windows)
        results["camera_like"] = camera_codecs(tmp, episodes, n_image_windows)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CAMERAS = ("obs/image/front", "obs/image/top")


def camera_codecs(tmp: Path, episodes: list[dict], n_windows: int) -> dict:
    """Camera-like frames (the renders plus sensor noise) as Blosc and as video: bytes per frame,
    append speed, first-pass and warm image-window sampling, and the video's fidelity (PSNR)."""
    rng = np.random.default_rng(2)
    noisy = [
        {
            k: np.clip(v + rng.normal(0, 4, v.shape), 0, 255).astype(np.uint8) if k in CAMERAS else v
            for k, v in ep.items()
        }
        for ep in episodes
    ]
    frames = sum(len(ep[k]) for ep in noisy for k in CAMERAS)
    out = {}
    for codec in ("blosc", "video"):
        path = tmp / f"camera_{codec}.zarr"
        seconds = write_ours(path, noisy, camera_codec=codec)
        folders = [path / ("video" if codec == "video" else "data") / k for k in CAMERAS]
        size = sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
        with EpisodeStore.open(path) as store:
            sampler = WindowSampler(store, HORIZON, N_OBS, N_ACTION, obs_keys=["obs/state", *CAMERAS])
            order = rng.integers(0, len(sampler), size=n_windows)
            cold = windows_per_second(lambda i, sampler=sampler, order=order: sampler[order[i]], n_windows)
            warm = windows_per_second(lambda i, sampler=sampler, order=order: sampler[order[i]], n_windows)
            decoded = store.episode(0)["obs/image/front"].astype(np.float64)
        error = np.mean((decoded - noisy[0]["obs/image/front"]) ** 2)
        out[codec] = {
            "bytes_per_frame": size / frames,
            "append_steps_per_s": sum(len(ep["action"]) for ep in noisy) / seconds,
            "first_pass_per_s": cold,
            "warm_per_s": warm,
            "psnr_db": float("inf") if error == 0 else float(10 * np.log10(255**2 / error)),
        }
    out["video_smaller"] = out["blosc"]["bytes_per_frame"] / out["video"]["bytes_per_frame"]
    return out


def checksum_cost(tmp: Path, episodes: list[dict], n_windows: int) -> dict:
    """Write and first-pass image sampling with and without checksums: best of 3, alternating."""
    write = {True: [], False: []}
    sample = {True: [], False: []}
    keys = ["obs/state", "obs/image/front", "obs/image/top"]
    for _ in range(3):
        for checksums in (True, False):
            path = tmp / f"crc_{checksums}.zarr"
            write[checksums].append(write_ours(path, episodes, checksums))
            with EpisodeStore.open(path) as store:
                sampler = WindowSampler(store, HORIZON, N_OBS, N_ACTION, obs_keys=keys)
                order = np.random.default_rng(1).integers(0, len(sampler), size=n_windows)
                sample[checksums].append(
                    windows_per_second(lambda i, sampler=sampler, order=order: sampler[order[i]], n_windows)
                )
    start = time.perf_counter()
    for _ in range(10):
        EpisodeStore.open(tmp / "crc_True.zarr").close()
    return {
        "write_s": min(write[True]),
        "write_s_without": min(write[False]),
        "write_cost": min(write[True]) / min(write[False]) - 1,
        "first_pass_per_s": max(sample[True]),
        "first_pass_per_s_without": max(sample[False]),
        "first_pass_cost": max(sample[False]) / max(sample[True]) - 1,
        "open_ms": (time.perf_counter() - start) / 10 * 1e3,
    }


def format_table(r: dict) -> str:
    d, w = r["data"], r["write"]
    lines = [
        f"store benchmark: {d['episodes']} episodes x {d['steps_per_episode']} steps, {d['cameras']}, "
        f"state {d['state']}, action {d['action']} ({d['raw_mb']:.0f} MB raw)",
        "",
        f"{'write':<34}{'steps/s':>10}{'MB/s':>9}{'image ratio':>13}",
        f"{'  EpisodeStore (zstd ' + str(IMAGE_BLOSC['clevel']) + ')':<34}"
        f"{w['ours_steps_per_s']:>10.0f}{w['ours_mb_per_s']:>9.1f}{w['ours_image_compression']:>12.1f}x",
        f"{'  plain zarr (defaults)':<34}"
        f"{w['plain_zarr_steps_per_s']:>10.0f}{w['plain_zarr_mb_per_s']:>9.1f}"
        f"{w['plain_zarr_image_compression']:>12.1f}x",
        f"{'  ratio (ours / plain)':<34}{w['ratio']:>9.2f}x",
        "",
        f"{'sample (windows/s)':<22}{'first pass':>12}{'warm':>10}{'plain zarr':>12}{'ratio':>16}",
    ]
    for name, s in r["sample"].items():
        lines.append(
            f"{'  ' + name:<22}{s['ours_first_pass_per_s']:>12.0f}{s['ours_warm_per_s']:>10.0f}"
            f"{s['plain_zarr_per_s']:>12.0f}"
            f"{s['ratio_first_pass']:>7.1f}x /{s['ratio_warm']:>5.1f}x"
        )
    c = r["checksums"]
    lines += [
        "",
        "integrity (CRC-32C per chunk, checks on open), best of 3",
        f"  write              {c['write_s']:.2f} s vs {c['write_s_without']:.2f} s without checksums: "
        f"{c['write_cost']:+.1%}",
        f"  image first pass   {c['first_pass_per_s']:.0f} vs {c['first_pass_per_s_without']:.0f} windows/s: "
        f"{c['first_pass_cost']:+.1%}",
        f"  open (metadata and chunk presence)  {c['open_ms']:.1f} ms",
        "",
        "camera-like frames (renders + sensor noise, std 4), 2 cameras",
        f"{'':<10}{'bytes/frame':>13}{'append steps/s':>16}{'first pass':>12}{'warm':>8}{'PSNR':>9}",
    ]
    v = r["camera_like"]
    for codec in ("blosc", "video"):
        x = v[codec]
        lines.append(
            f"{'  ' + codec:<10}{x['bytes_per_frame']:>13.0f}{x['append_steps_per_s']:>16.0f}"
            f"{x['first_pass_per_s']:>12.0f}{x['warm_per_s']:>8.0f}{x['psnr_db']:>7.1f}dB"
        )
    lines.append(f"  video is {v['video_smaller']:.1f}x smaller than Blosc")
    return "\n".join(lines)
