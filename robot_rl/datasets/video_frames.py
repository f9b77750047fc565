"""Camera keys of an EpisodeStore kept as video (`codec: video` in the schema): each episode's
frames one H.264 mp4, `<store>/video/<key>/<episode>.mp4`, and an index `meta/video/<key>` of
(frames, bytes, CRC-32C) per episode.

Real camera frames are noisy, and Blosc compresses them 1.1-1.5x; H.264 makes them about 25x
smaller than Blosc (docs/data.md has the measured table) at a mean error of a few grey levels.
Every `GOP` frames is a keyframe (no scene-cut keyframes, no B-frames), so any frame is reached by
seeking to the keyframe before it and decoding at most GOP - 1 frames; `VideoArray` reads like
the store's other arrays and caches decoded GOPs and open decoders.

Crash safety as for the other keys: an episode's video is written (temp file, rename) and
indexed before `meta/episode_ends` makes the episode visible; a killed append leaves only files
of an episode no one sees, replaced by the next append.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import google_crc32c
import numpy as np

from robot_rl.errors import DatasetError

GOP = 8  # frames between keyframes: a random frame costs at most 7 extra decoded frames
CRF = 23  # libx264's default quality
INDEX_COLUMNS = ("frames", "bytes", "crc32c")


def encoder_settings(shape) -> dict:
    """What a key's video is encoded with (kept in its index's attributes)."""
    height, width = shape[:2]
    # 4:2:0 halves the chroma resolution and needs even sides; 4:4:4 takes any size.
    pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
    return {"codec": "h264", "crf": CRF, "gop": GOP, "pix_fmt": pix_fmt}


def encode_frames(frames: np.ndarray, settings: dict) -> bytes:
    """(T, H, W, 3) uint8 frames as an mp4 in memory, frame i at pts i (time base 1/1000 s per
    frame is not needed: the index is the frame number)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], settings["pix_fmt"]
        stream.codec_context.time_base = Fraction(1, 30)
        gop = str(settings["gop"])
        stream.options = {
            "crf": str(settings["crf"]),
            "g": gop,
            "keyint_min": gop,
            "sc_threshold": "0",  # keyframes only every `gop`: where the reader expects them
            "bf": "0",
            "preset": "veryfast",
        }
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def checksum(data: bytes) -> int:
    return int(google_crc32c.value(data))


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    temp.write_bytes(data)
    os.replace(temp, path)


def episode_file(folder: Path, episode: int) -> Path:
    return folder / f"{episode:09d}.mp4"


class VideoArray:
    """One video key of a store, read like a zarr array along time: `array[start:stop]` gives
    (n, H, W, 3) uint8 frames. `ends()` gives the store's committed episode ends."""

    caches_itself = True  # the WindowSampler's chunk cache leaves the caching to this array

    def __init__(self, store_path: Path, key: str, spec: dict, index, ends, cache_mb: float = 256):
        self.store_path, self.key, self.index, self._ends = store_path, key, index, ends
        self.folder = Path(store_path) / "video" / key
        self.dtype = np.dtype(spec["dtype"])
        self.frame_shape = tuple(spec["shape"])
        self.attrs = index.attrs
        self.gop = int(self.attrs.get("gop", GOP))
        self.chunks = (self.gop, *self.frame_shape)
        self.ndim = 1 + len(self.frame_shape)
        self._decoders: OrderedDict[int, object] = OrderedDict()
        self._gops: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._gop_bytes, self._max_bytes = 0, int(cache_mb * 2**20)
        self._rgb = None  # one converter for every frame: a new one per frame costs ~10 ms to set up

    def __getstate__(self):  # what a copy in another process takes: no FFmpeg state
        return {
            **self.__dict__,
            "_decoders": OrderedDict(),
            "_gops": OrderedDict(),
            "_gop_bytes": 0,
            "_rgb": None,
        }

    @property
    def shape(self) -> tuple[int, ...]:
        rows = np.asarray(self.index[:, 0]) if self.index.shape[0] else np.zeros(0, np.int64)
        return (int(rows.sum()), *self.frame_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
            return self[index][(slice(None), *rest)]
        ends = self._ends()
        n = int(ends[-1]) if len(ends) else 0
        if isinstance(index, (int, np.integer)):
            i = int(index) + n if index < 0 else int(index)
            if not 0 <= i < n:
                raise IndexError(f"step {index} of {n}")
            return self._frames(ends, i, i + 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            frames = self._frames(ends, start, max(start, stop))
            return frames[::step] if step != 1 else frames
        steps = np.asarray(index).reshape(-1)  # a list of steps
        return np.stack([self[int(i)] for i in steps]) if len(steps) else self._empty()

    def _empty(self) -> np.ndarray:
        return np.zeros((0, *self.frame_shape), self.dtype)

    def _frames(self, ends: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Frames of global steps [start, stop), across episodes."""
        if stop <= start:
            return self._empty()
        parts = []
        first = int(np.searchsorted(ends, start, side="right"))
        for e in range(first, len(ends)):
            begin = int(ends[e - 1]) if e > 0 else 0
            if begin >= stop:
                break
            lo, hi = max(start, begin) - begin, min(stop, int(ends[e])) - begin
            for g in range(lo // self.gop, (hi - 1) // self.gop + 1):
                frames = self._gop(e, g)
                a, b = max(lo, g * self.gop) - g * self.gop, min(hi, (g + 1) * self.gop) - g * self.gop
                parts.append(frames[a:b])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _gop(self, episode: int, g: int) -> np.ndarray:
        cached = self._gops.get((episode, g))
        if cached is not None:
            self._gops.move_to_end((episode, g))
            return cached
        length = int(self.index[episode, 0])
        want = min(self.gop, length - g * self.gop)
        frames = self._decode(episode, g * self.gop, want)
        self._gops[(episode, g)] = frames
        self._gop_bytes += frames.nbytes
        while self._gop_bytes > self._max_bytes and len(self._gops) > 1:
            _, old = self._gops.popitem(last=False)
            self._gop_bytes -= old.nbytes
        return frames

    def _decode(self, episode: int, first: int, count: int) -> np.ndarray:
        """`count` frames of an episode from frame `first` (a keyframe)."""
        if self._rgb is None:
            from av.video.reformatter import VideoReformatter

            self._rgb = VideoReformatter()
        container = self._decoder(episode)
        stream = container.streams.video[0]
        out = []
        try:
            container.seek(
                int(first / (stream.time_base * 30)), stream=stream, backward=True, any_frame=False
            )
            for frame in container.decode(stream):
                i = int(round(frame.pts * stream.time_base * 30))
                if i >= first:
                    out.append(self._rgb.reformat(frame, format="rgb24").to_ndarray())
                if len(out) == count:
                    break
        except Exception as exc:  # FFmpeg errors of every kind: damage, named
            self._decoders.pop(episode, None)
            raise self._damaged(episode, f"does not decode ({type(exc).__name__}: {exc})") from None
        if len(out) != count:
            self._decoders.pop(episode, None)
            raise self._damaged(episode, f"holds fewer frames than its index says ({first + len(out)})")
        return np.stack(out)

    def _decoder(self, episode: int):
        container = self._decoders.get(episode)
        if container is not None:
            self._decoders.move_to_end(episode)
            return container
        import av

        container = av.open(io.BytesIO(self.episode_bytes(episode)))
        self._decoders[episode] = container
        while len(self._decoders) > 64:  # an open decoder holds its file's bytes and FFmpeg's state
            _, old = self._decoders.popitem(last=False)
            old.close()
        return container

    def episode_bytes(self, episode: int) -> bytes:
        """The episode's mp4, checked against its index (size and CRC-32C)."""
        path = episode_file(self.folder, episode)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._damaged(episode, "is missing") from None
        frames, size, crc = (int(x) for x in self.index[episode])
        if len(data) != size or checksum(data) != crc:
            raise self._damaged(episode, "fails its checksum")
        return data

    def check(self, episode: int) -> None:
        """Decode every frame of an episode (verify)."""
        self._decoders.pop(episode, None)
        frames = int(self.index[episode, 0])
        for g in range(-(-frames // self.gop)):
            self._gops.pop((episode, g), None)
            self._gop(episode, g)

    def _damaged(self, episode: int, problem: str) -> DatasetError:
        return DatasetError(
            f"{self.store_path}: {self.key} episode {episode} {problem}; "
            f"robot-rl dataset verify {self.store_path} lists the damage"
        )
