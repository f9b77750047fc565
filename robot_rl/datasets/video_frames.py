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
    """What a key's video is encoded with (kept in its index's attributes). Full-resolution
    chroma (4:4:4): 4:2:0 halves it, which costs robot cameras' small frames visible colour
    detail for a size saving measured at 0-14 %; 4:4:4 also takes frames of any size."""
    return {"codec": "h264", "crf": CRF, "gop": GOP, "pix_fmt": "yuv444p"}


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
    (n, H, W, 3) uint8 frames, decoded from the keyframe before `start` on. `ends()` gives the
    store's committed episode ends. Caching decoded frames is the reader's business (the
    WindowSampler's chunk cache keeps whole keyframe groups: `chunk_span`)."""

    def __init__(self, store_path: Path, key: str, spec: dict, index, ends, decoders_mb: float = 256):
        self.store_path, self.key, self.index, self._ends = store_path, key, index, ends
        self.folder = Path(store_path) / "video" / key
        self.dtype = np.dtype(spec["dtype"])
        self.frame_shape = tuple(spec["shape"])
        self.attrs = index.attrs
        self.gop = int(self.attrs.get("gop", GOP))
        self.ndim = 1 + len(self.frame_shape)
        self._rows: np.ndarray | None = None  # the index in memory
        # Open decoders, each holding its mp4: kept while their files total under decoders_mb.
        self._decoders: OrderedDict[int, tuple[object, int]] = OrderedDict()
        self._decoder_bytes, self._max_decoder_bytes = 0, int(decoders_mb * 2**20)
        self._rgb = None  # one converter for every frame: a new one per frame costs ~10 ms to set up

    def __getstate__(self):  # what a copy in another process takes: no FFmpeg state
        return {**self.__dict__, "_decoders": OrderedDict(), "_decoder_bytes": 0, "_rgb": None}

    # --- writing (the store, before it commits the episode) -----------------------------------
    def add_episode(self, episode: int, data: bytes, frames: int) -> None:
        """Episode `episode`'s mp4, then its index entry: what a killed append leaves of them
        belongs to an episode no one sees, and is replaced here by the next append."""
        write_atomic(episode_file(self.folder, episode), data)
        self.index.resize((episode + 1, len(INDEX_COLUMNS)))
        self.index[episode] = (frames, len(data), checksum(data))
        self._rows = None
        old = self._decoders.pop(episode, None)
        if old is not None:
            old[0].close()

    # --- shape ---------------------------------------------------------------------------------
    def _row(self, episode: int) -> np.ndarray:
        if self._rows is None or episode >= len(self._rows):
            self._rows = np.asarray(self.index[:], np.int64).reshape(-1, len(INDEX_COLUMNS))
        return self._rows[episode]

    @property
    def shape(self) -> tuple[int, ...]:
        rows = np.asarray(self.index[:], np.int64).reshape(-1, len(INDEX_COLUMNS))
        return (int(rows[:, 0].sum()), *self.frame_shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return (self.gop, *self.frame_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def chunk_span(self, step: int) -> tuple[int, int]:
        """The steps [lo, hi) of the keyframe group that holds global step `step`: decoded
        together, so what a cache keeps whole."""
        ends = self._ends()
        e = int(np.searchsorted(ends, step, side="right"))
        begin = int(ends[e - 1]) if e > 0 else 0
        lo = begin + (step - begin) // self.gop * self.gop
        return lo, min(lo + self.gop, int(ends[e]))

    # --- reading -------------------------------------------------------------------------------
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
        """Frames of global steps [start, stop), across episodes: one seek per episode."""
        if stop <= start:
            return self._empty()
        parts = []
        for e in range(int(np.searchsorted(ends, start, side="right")), len(ends)):
            begin = int(ends[e - 1]) if e > 0 else 0
            if begin >= stop:
                break
            lo, hi = max(start, begin) - begin, min(stop, int(ends[e])) - begin
            keyframe = lo // self.gop * self.gop
            parts.append(self._decode(e, keyframe, hi - keyframe)[lo - keyframe :])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

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
            self._forget(episode)
            raise self._damaged(episode, f"does not decode ({type(exc).__name__}: {exc})") from None
        if len(out) != count:
            self._forget(episode)
            raise self._damaged(episode, f"holds fewer frames than its index says ({first + len(out)})")
        return np.stack(out)

    def _decoder(self, episode: int):
        held = self._decoders.get(episode)
        if held is not None:
            self._decoders.move_to_end(episode)
            return held[0]
        import av

        data = self.episode_bytes(episode)
        container = av.open(io.BytesIO(data))
        # One thread: a decode is a few small frames, and threads per decoder would multiply
        # with the decoders kept open.
        container.streams.video[0].codec_context.thread_count = 1
        self._decoders[episode] = (container, len(data))
        self._decoder_bytes += len(data)
        while self._decoder_bytes > self._max_decoder_bytes and len(self._decoders) > 1:
            self._forget(next(iter(self._decoders)))
        return container

    def _forget(self, episode: int) -> None:
        held = self._decoders.pop(episode, None)
        if held is not None:
            held[0].close()
            self._decoder_bytes -= held[1]

    def episode_bytes(self, episode: int) -> bytes:
        """The episode's mp4, checked against its index (size and CRC-32C)."""
        path = episode_file(self.folder, episode)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._damaged(episode, "is missing") from None
        frames, size, crc = (int(x) for x in self._row(episode))
        if len(data) != size or checksum(data) != crc:
            raise self._damaged(episode, "fails its checksum")
        return data

    def check(self, episode: int) -> None:
        """Decode every frame of an episode (verify)."""
        self._forget(episode)
        self._decode(episode, 0, int(self._row(episode)[0]))

    def _damaged(self, episode: int, problem: str) -> DatasetError:
        return DatasetError(
            f"{self.store_path}: {self.key} episode {episode} {problem}; "
            f"robot-rl dataset verify {self.store_path} lists the damage"
        )
