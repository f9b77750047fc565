"""`robot-rl bench store`: episode write and window sampling throughput of the EpisodeStore.

Data as in the reference measurements (docs/benchmarks.md): episodes of 200 steps with two 84x84x3
uint8 cameras, state 9 and action 7 float32. Images are real MuJoCo renders of the reach arm (a pool
of frames from scripted reaches, cut into episodes), so compression behaves as on simulated camera
data. Windows of 16 steps (pad 1 before, 7 after) at random indices, read in batches of 256 as a
learner reads them, single process, store on disk.

Baselines in the same run. Writing: plain zarr (default codec, automatic chunks). Sampling: what a
user of diffusion_policy gets, rebuilt from its code: the store laid out as its ReplayBuffer writes
one (`add_episode`: chunks sized by its `get_optimal_chunks` from the first episode, a 2 MB target,
so whole 200-step episodes of state and 95 frames of camera; Blosc lz4 without shuffle, its default
compressor) and windows read as its SequenceSampler reads them, one slice per key per window
(observation keys their first n_obs steps), padded by repeating the edge steps. It is timed twice:
through zarr (the installed zarr 3), and with each slice's chunks read and decoded straight from
their files, which is all that zarr 2 (diffusion_policy's) does per slice: a floor for its cost.
Ours: a fresh sampler (first pass: every chunk decoded once, kept in the 1 GiB cache), the same
batches again (warm), and a sampler with no cache (cache off: what a dataset larger than the cache
costs), drawing as it does by default when the data outgrow the cache (OUT_OF_CORE_GROUP windows
to a chunk) and drawing i.i.d. windows (`windows_per_chunk=1`, diffusion_policy's draw).

The cost of integrity: the same store without CRC-32C checksums, written and sampled (first pass)
in the same run, best of three alternating repeats, and the time `EpisodeStore.open` takes to check
the metadata and that every chunk is on disk. Camera-like images: the same renders with Gaussian
sensor noise (std 4 grey levels, as a real camera's), stored with the camera codec, with the one it
replaced (zstd without shuffle), as diffusion_policy stores them on disk (its "disk" compressor,
zstd 5 with bit-shuffle, its chunks) and as video (`codec: video`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from robot_rl.datasets import EpisodeStore, WindowSampler
from robot_rl.datasets.store import IMAGE_BLOSC, chunk_file, with_camera_codec

HORIZON, N_OBS, N_ACTION = 16, 2, 8  # pad_before 1, pad_after 7
BATCH = 256
CAMERAS = ("obs/image/front", "obs/image/top")


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
    path: Path,
    episodes: list[dict],
    checksums: bool = True,
    camera_codec: str = "blosc",
    camera_blosc: dict | None = None,
) -> float:
    schema = with_camera_codec({k: (v.shape[1:], v.dtype) for k, v in episodes[0].items()}, camera_codec)
    for key in CAMERAS if camera_blosc else ():
        schema[key]["codec"] = camera_blosc
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


def dp_chunks(shape: tuple[int, ...], dtype, target_bytes: float = 2e6) -> tuple[int, ...]:
    """diffusion_policy's get_optimal_chunks for a (T, ...) episode array whose step fits the
    target (every key here): the whole step, and as many steps as fill `target_bytes`, at most T."""
    step_bytes = int(np.prod(shape[1:], dtype=int)) * np.dtype(dtype).itemsize
    return (min(shape[0], -(-int(target_bytes) // step_bytes)), *shape[1:])


def write_dp_layout(path: Path, episodes: list[dict], blosc: dict | None = None) -> float:
    """A store laid out as diffusion_policy's ReplayBuffer.add_episode writes one: data/<key> created
    at the first episode with its optimal chunks and compressor (default Blosc lz4 5 without
    shuffle), each episode appended by resize and slice assignment, meta/episode_ends."""
    from zarr.codecs import BloscCodec

    blosc = blosc or {"cname": "lz4", "clevel": 5, "shuffle": "noshuffle"}
    start = time.perf_counter()
    root = zarr.open_group(str(path), mode="w")
    ends = root.create_array("meta/episode_ends", shape=(0,), dtype="int64", chunks=(1024,), compressors=None)
    arrays, n = {}, 0
    for ep in episodes:
        length = len(next(iter(ep.values())))
        for key, value in ep.items():
            if key not in arrays:
                arrays[key] = root.create_array(
                    f"data/{key}",
                    shape=(0, *value.shape[1:]),
                    dtype=value.dtype,
                    chunks=dp_chunks(value.shape, value.dtype),
                    compressors=BloscCodec(**blosc, typesize=value.dtype.itemsize),
                )
            arrays[key].resize((n + length, *value.shape[1:]))
            arrays[key][n : n + length] = value
        n += length
        ends.append(np.array([n]))
    return time.perf_counter() - start


class DiffusionPolicyWindows:
    """Windows as diffusion_policy's SequenceSampler.sample_sequence reads them from a store in its
    layout: per key one slice [buffer_start, buffer_end) (observation keys only their first n_obs
    steps), padded by repeating the first and last real step. `direct` reads each slice's chunks
    from their files and decodes them (zarr 2's work per slice, without its overhead)."""

    def __init__(self, path: Path, keys: list[str], obs_keys: list[str], direct: bool):
        import numcodecs

        root = zarr.open_group(str(path), mode="r")
        self.arrays = {k: root[f"data/{k}"] for k in keys}
        self.obs_keys, self.direct, self.blosc = set(obs_keys), direct, numcodecs.Blosc()

    def _slice(self, array, a: int, b: int) -> np.ndarray:
        if not self.direct:
            return array[a:b]
        size = array.chunks[0]
        parts = []
        for t in range(a // size, (b - 1) // size + 1):
            raw = self.blosc.decode(chunk_file(array, t).read_bytes())
            chunk = np.frombuffer(raw, array.dtype).reshape(array.chunks)
            parts.append(chunk[max(a - t * size, 0) : b - t * size])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __call__(self, row) -> dict[str, np.ndarray]:
        buffer_start, buffer_end, sample_start, sample_end = (int(x) for x in row)
        out = {}
        for key, array in self.arrays.items():
            n = N_OBS if key in self.obs_keys else HORIZON
            real = self._slice(array, buffer_start, min(buffer_end, buffer_start + n))
            data = np.empty((HORIZON, *array.shape[1:]), array.dtype)
            data[:sample_start] = real[0]
            data[sample_start : sample_start + len(real)] = real
            data[sample_start + len(real) :] = real[-1]
            out[key] = data[:n]
        return out


def windows_per_second(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def batched_rate(read, order: np.ndarray) -> float:
    """Windows/s reading the windows `order` in batches of BATCH through `read(indices)`."""
    start = time.perf_counter()
    for i in range(0, len(order), BATCH):
        read(order[i : i + BATCH])
    return len(order) / (time.perf_counter() - start)


def sampling(store: EpisodeStore, dp_path: Path, obs_keys: list[str], n: int, rng, quick: bool) -> dict:
    """Windows/s of our sampler (first pass, warm, cache off by its default draw and i.i.d.) and of
    diffusion_policy's reads of its own layout (straight from the chunk files, and through zarr),
    over the same n random windows in batches of BATCH."""
    keys = obs_keys + ["action"]

    def sampler(**kw):
        return WindowSampler(store, HORIZON, N_OBS, N_ACTION, obs_keys=obs_keys, **kw)

    cached = sampler()
    order = rng.integers(0, len(cached), size=n)
    first = batched_rate(cached.windows, order)
    warm = batched_rate(cached.windows, order)
    iid = sampler(cache_mb=0, windows_per_chunk=1)
    off_iid = batched_rate(iid.windows, order)
    cache_off, draws = sampler(cache_mb=0), np.random.default_rng(1)  # the default draw, out of core
    off = batched_rate(lambda b: cache_off.sample(len(b), draws), order)
    rows = cached.indices[order]
    direct, through_zarr = (DiffusionPolicyWindows(dp_path, keys, obs_keys, d) for d in (True, False))
    for i in range(0, n, max(1, n // 20)):  # the baseline reads the same windows
        for key, value in direct(rows[i]).items():
            np.testing.assert_array_equal(value, cached[int(order[i])][key])
    dp_direct = windows_per_second(lambda i: direct(rows[i]), n)
    n_zarr = min(n, 200 if quick else 2000)  # zarr 3 takes ~1 ms a slice
    dp_zarr = windows_per_second(lambda i: through_zarr(rows[i]), n_zarr)
    return {
        "windows": n,
        "batch": BATCH,
        "ours_first_pass_per_s": first,
        "ours_warm_per_s": warm,
        "ours_cache_off_per_s": off,
        "ours_cache_off_windows_per_chunk": cache_off.windows_per_chunk,
        "ours_cache_off_iid_per_s": off_iid,
        "diffusion_policy_direct_per_s": dp_direct,
        "diffusion_policy_zarr3_per_s": dp_zarr,
        "diffusion_policy_zarr3_windows": n_zarr,
        "ratio_first_pass": first / dp_direct,
        "ratio_warm": warm / dp_direct,
        "ratio_cache_off": off / dp_direct,
        "ratio_cache_off_iid": off_iid / dp_direct,
        "decodes_per_batch_cache_off": cache_off.decodes * BATCH / n,
        "decodes_per_batch_cache_off_iid": iid.decodes * BATCH / n,
    }


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
        dp_s = write_dp_layout(tmp / "dp.zarr", episodes)
        results["write"]["diffusion_policy_steps_per_s"] = steps / dp_s
        rng = np.random.default_rng(0)
        for name, obs_keys, n in (
            ("state", ["obs/state"], n_state_windows),
            ("images", ["obs/state", "obs/image/front", "obs/image/top"], n_image_windows),
        ):
            results["sample"][name] = sampling(store, tmp / "dp.zarr", obs_keys, n, rng, quick)
        results["checksums"] = checksum_cost(tmp, episodes, n_image_windows)
        results["camera_like"] = camera_codecs(tmp, episodes, n_image_windows)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BEFORE_BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "noshuffle"}  # the camera codec until 2026-12-07
DP_DISK_BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "bitshuffle"}  # diffusion_policy's "disk"


def camera_codecs(tmp: Path, episodes: list[dict], n_windows: int) -> dict:
    """Camera-like frames (the renders plus sensor noise) stored with our camera codec, with the one
    it replaced, as diffusion_policy stores them on disk, and as video: bytes per frame, append
    speed, first-pass and warm image-window sampling, and the video's fidelity (PSNR)."""
    rng = np.random.default_rng(2)
    noisy = [
        {
            k: np.clip(v + rng.normal(0, 4, v.shape), 0, 255).astype(np.uint8) if k in CAMERAS else v
            for k, v in ep.items()
        }
        for ep in episodes
    ]
    frames = sum(len(ep[k]) for ep in noisy for k in CAMERAS)
    raw = sum(ep[k].nbytes for ep in noisy for k in CAMERAS)

    def folder_bytes(folders) -> int:
        return sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())

    out = {}
    for name, codec, blosc in (
        ("blosc", "blosc", None),
        ("before", "blosc", BEFORE_BLOSC),
        ("video", "video", None),
    ):
        path = tmp / f"camera_{name}.zarr"
        seconds = write_ours(path, noisy, camera_codec=codec, camera_blosc=blosc)
        size = folder_bytes([path / ("video" if codec == "video" else "data") / k for k in CAMERAS])
        with EpisodeStore.open(path) as store:
            sampler = WindowSampler(store, HORIZON, N_OBS, N_ACTION, obs_keys=["obs/state", *CAMERAS])
            order = rng.integers(0, len(sampler), size=n_windows)
            cold, warm = batched_rate(sampler.windows, order), batched_rate(sampler.windows, order)
            decoded = store.episode(0)["obs/image/front"].astype(np.float64)
        error = np.mean((decoded - noisy[0]["obs/image/front"]) ** 2)
        out[name] = {
            "bytes_per_frame": size / frames,
            "compression": raw / size,
            "append_steps_per_s": sum(len(ep["action"]) for ep in noisy) / seconds,
            "first_pass_per_s": cold,
            "warm_per_s": warm,
            "psnr_db": float("inf") if error == 0 else float(10 * np.log10(255**2 / error)),
        }
    write_dp_layout(tmp / "camera_dp.zarr", noisy, DP_DISK_BLOSC)
    dp_size = folder_bytes([tmp / "camera_dp.zarr/data" / k for k in CAMERAS])
    out["diffusion_policy_disk"] = {"bytes_per_frame": dp_size / frames, "compression": raw / dp_size}
    out["video_smaller"] = out["blosc"]["bytes_per_frame"] / out["video"]["bytes_per_frame"]
    out["compression_over_diffusion_policy"] = (
        out["blosc"]["compression"] / out["diffusion_policy_disk"]["compression"]
    )
    out["append_over_before"] = out["blosc"]["append_steps_per_s"] / out["before"]["append_steps_per_s"]
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
                sample[checksums].append(batched_rate(sampler.windows, order))
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
    codec = f"{IMAGE_BLOSC['cname']} {IMAGE_BLOSC['clevel']} {IMAGE_BLOSC['shuffle']}"
    lines = [
        f"store benchmark: {d['episodes']} episodes x {d['steps_per_episode']} steps, {d['cameras']}, "
        f"state {d['state']}, action {d['action']} ({d['raw_mb']:.0f} MB raw)",
        "",
        f"{'write':<40}{'steps/s':>10}{'MB/s':>9}{'image ratio':>13}",
        f"{'  EpisodeStore (' + codec + ')':<40}"
        f"{w['ours_steps_per_s']:>10.0f}{w['ours_mb_per_s']:>9.1f}{w['ours_image_compression']:>12.1f}x",
        f"{'  plain zarr (defaults)':<40}"
        f"{w['plain_zarr_steps_per_s']:>10.0f}{w['plain_zarr_mb_per_s']:>9.1f}"
        f"{w['plain_zarr_image_compression']:>12.1f}x",
        f"{'  diffusion_policy ReplayBuffer layout':<40}{w['diffusion_policy_steps_per_s']:>10.0f}",
        f"{'  ratio (ours / plain)':<40}{w['ratio']:>9.2f}x",
        "",
        f"sample, windows/s in batches of {BATCH}; diffusion_policy: its layout, its SequenceSampler's reads",
        f"{'':<10}{'first pass':>11}{'warm':>9}{'cache off':>11}{'off, i.i.d.':>13}"
        f"{'dp direct':>11}{'dp zarr3':>10}   ratio to dp direct (first / off / off i.i.d.)",
    ]
    for name, s in r["sample"].items():
        lines.append(
            f"{'  ' + name:<10}{s['ours_first_pass_per_s']:>11.0f}{s['ours_warm_per_s']:>9.0f}"
            f"{s['ours_cache_off_per_s']:>11.0f}{s['ours_cache_off_iid_per_s']:>13.0f}"
            f"{s['diffusion_policy_direct_per_s']:>11.0f}{s['diffusion_policy_zarr3_per_s']:>10.0f}"
            f"   {s['ratio_first_pass']:.1f}x / {s['ratio_cache_off']:.2f}x"
            f" / {s['ratio_cache_off_iid']:.2f}x"
        )
    group = next(iter(r["sample"].values()))["ours_cache_off_windows_per_chunk"]
    lines.append(f"  cache off: the default draw for data larger than the cache, {group} windows to a chunk")
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
        f"{'':<34}{'bytes/frame':>12}{'ratio':>8}{'append steps/s':>16}{'first pass':>12}{'warm':>8}"
        f"{'PSNR':>9}",
    ]
    v = r["camera_like"]
    names = {
        "blosc": f"Blosc {codec}",
        "before": "Blosc zstd 5 noshuffle (before)",
        "diffusion_policy_disk": "diffusion_policy disk (zstd 5 bit)",
        "video": "video (H.264)",
    }
    for key, label in names.items():
        x = v[key]
        line = f"{'  ' + label:<34}{x['bytes_per_frame']:>12.0f}{x['compression']:>7.2f}x"
        if "append_steps_per_s" in x:
            line += (
                f"{x['append_steps_per_s']:>16.0f}{x['first_pass_per_s']:>12.0f}{x['warm_per_s']:>8.0f}"
                f"{x['psnr_db']:>7.1f}dB"
            )
        lines.append(line)
    lines.append(
        f"  compression {v['compression_over_diffusion_policy']:.3f}x diffusion_policy's, append "
        f"{v['append_over_before']:.2f}x the codec before; "
        f"video is {v['video_smaller']:.1f}x smaller than Blosc"
    )
    return "\n".join(lines)
