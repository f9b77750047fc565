"""Videos that play everywhere: H.264 in MP4 (yuv420p), what browsers, TensorBoard and Weights &
Biases decode; OpenCV's pip wheels encode only MPEG-4 part 2 (mp4v), which none of them play.
Encoded with PyAV's bundled FFmpeg (libx264)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_video(frames: np.ndarray, path, fps: float) -> Path:
    """RGB frames (T, H, W, 3) uint8 -> `path`: .mp4 (H.264) or .gif. Written beside the target
    and renamed, so an interrupted write leaves no half video under the name."""
    path, fps = Path(path), float(fps)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0 or frames.dtype != np.uint8:
        raise ValueError(f"a video needs uint8 RGB frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if not fps > 0:
        raise ValueError(f"a video needs a positive frame rate, got {fps}")
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        if path.suffix == ".gif":
            import imageio.v2 as imageio

            imageio.mimsave(partial, list(frames), duration=1000.0 / fps, loop=0)  # ms a frame
        else:
            _write_h264(frames, partial, fps)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _write_h264(frames: np.ndarray, path: Path, fps: float) -> None:
    import av

    # yuv420p halves the chroma resolution: both sides must be even (padded with the edge pixels).
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
