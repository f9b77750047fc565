"""Video ingest: video files (mp4, avi, ... through OpenCV) or folders of frames into an
observation-only EpisodeStore (`obs/image/<camera>`, uint8 RGB, no actions, no rewards).

One episode per video file (or per folder of frames), split further at detected cuts: a cut is a
frame whose colour histogram correlates with the previous frame's below `1 - cut_threshold`.
Frames are centre-cropped to a square, resized, and subsampled to `fps`. A file that cannot be
read is reported and skipped; the import goes on with the others.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_rl.errors import DatasetError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def square_resize(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to a square, resize to size x size, BGR -> RGB."""
    import cv2

    h, w = frame_bgr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = frame_bgr[top : top + side, left : left + side]
    return cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def _histogram(frame_rgb: np.ndarray) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, hist).flatten()


def split_at_cuts(frames: list[np.ndarray], threshold: float | None) -> list[list[np.ndarray]]:
    """Consecutive frames whose histogram correlation drops below 1 - threshold start a new part."""
    import cv2

    if threshold is None or len(frames) < 2:
        return [frames]
    parts, previous = [[frames[0]]], _histogram(frames[0])
    for frame in frames[1:]:
        hist = _histogram(frame)
        if cv2.compareHist(previous, hist, cv2.HISTCMP_CORREL) < 1.0 - threshold:
            parts.append([])
        parts[-1].append(frame)
        previous = hist
    return parts


def _keep(index: int, source_fps: float, fps: float | None, kept: int) -> bool:
    """Frame `index` is kept when it is the first at or after the next output time."""
    if not fps or not source_fps or fps >= source_fps:
        return True
    return index / source_fps + 1e-9 >= kept / fps


def read_video(path: Path, size: int, fps: float | None) -> tuple[list[np.ndarray], float]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError("OpenCV cannot open it")
    source_fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    frames, index = [], 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if _keep(index, source_fps, fps, len(frames)):
                frames.append(square_resize(frame, size))
            index += 1
    finally:
        capture.release()
    if not frames:
        raise DatasetError("no decodable frames")
    return frames, source_fps


def read_frames(folder: Path, size: int, fps: float | None, source_fps: float) -> list[np.ndarray]:
    import cv2

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames, bad = [], []
    for i, file in enumerate(files):
        if not _keep(i, source_fps, fps, len(frames)):
            continue
        frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if frame is None:
            bad.append(file.name)
            continue
        frames.append(square_resize(frame, size))
    if not frames:
        raise DatasetError(f"no readable frames{' (unreadable: ' + ', '.join(bad[:3]) + ')' if bad else ''}")
    return frames


def _native_fps(source: Path, frames_fps: float) -> float:
    import cv2

    if source.is_dir():
        return frames_fps
    capture = cv2.VideoCapture(str(source))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS) or frames_fps)
    finally:
        capture.release()


def find_sources(src: Path) -> list[Path]:
    """Video files and folders of frames under `src` (itself one of them, or a folder of them)."""
    if not src.exists():
        raise DatasetError(f"no video or folder at {src}")
    if src.is_file():
        return [src]
    sources = [src] if any(p.suffix.lower() in IMAGE_SUFFIXES for p in src.iterdir()) else []
    for p in sorted(src.iterdir()):
        if p.is_dir():
            sources.extend(find_sources(p))
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            sources.append(p)
    return sources


def import_video(
    src,
    out,
    size: int = 84,
    fps: float | None = 10.0,
    camera: str = "front",
    cut_threshold: float | None = 0.5,
    frames_fps: float = 30.0,
    min_frames: int = 2,
    task: str | None = None,
    progress: bool = True,
) -> dict:
    """Import every video and frame folder under `src` into a new store at `out`."""
    from robot_rl.datasets.store import EpisodeStore, remove_dead_leftovers

    src, out = Path(src), Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; import into a new store")
    sources = find_sources(src)
    if not sources:
        raise DatasetError(
            f"{src} holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) or image frames"
        )
    key = f"obs/image/{camera}"
    rate = fps or _native_fps(sources[0], frames_fps)  # keeping every frame: the first source's rate
    attrs = {"source": f"robot-rl dataset import-video {src}", "task": task or "", "observation_only": True}
    skipped, lengths, start = [], [], time.monotonic()
    # Built beside `out` and renamed at the end: a failed or killed import leaves nothing at `out`.
    remove_dead_leftovers(out)
    building = out.with_name(f".{out.name}.importing-{os.getpid()}")
    try:
        with EpisodeStore.create(
            building, {key: ((size, size, 3), "uint8")}, fps=rate, attrs=attrs, overwrite=True
        ) as store:
            for source in tqdm(sources, desc="import video", unit="file", disable=not progress):
                try:
                    frames = (
                        read_frames(source, size, fps, frames_fps)
                        if source.is_dir()
                        else read_video(source, size, fps)[0]
                    )
                except DatasetError as exc:
                    skipped.append({"source": str(source), "reason": str(exc)})
                    tqdm.write(f"skipped {source}: {exc}", file=sys.stderr)
                    continue
                for part in split_at_cuts(frames, cut_threshold):
                    if len(part) >= min_frames:
                        store.append_episode({key: np.stack(part)})
                        lengths.append(len(part))
        if not lengths:
            reasons = (
                "; ".join(f"{Path(s['source']).name}: {s['reason']}" for s in skipped[:3])
                or f"no source had {min_frames} frames"
            )
            raise DatasetError(
                f"nothing imported from {src} ({len(skipped)} of {len(sources)} files skipped: {reasons})"
            )
        os.rename(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return {
        "store": str(out),
        "sources": len(sources),
        "episodes": len(lengths),
        "frames": int(sum(lengths)),
        "skipped": skipped,
        "seconds": time.monotonic() - start,
    }
