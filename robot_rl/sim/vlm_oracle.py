"""A stand-in VLM for simulated data: an OpenAI-compatible chat-completions server on loopback
that reads the images it is sent, finds the stored frames they are (by pixel hash), and judges
them from the sim state recorded with them, wrong on purpose in a chosen share of pairs.

It plays both of RL-VLM-F's stages the way a VLM does: the analysis request (two images) gets a
description of each image and which is closer to the goal; the verdict request (text only) is
answered from that analysis alone. Where real VLM weights cannot run (CI, this machine), labels
still go through the real HTTP client, prompts, parser and cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from robot_rl.errors import ConfigError
from robot_rl.utils.images import decode_png, frame_hash, tile

TIE = 1e-3  # progress differences below this read as "no difference"


def _field(state: np.ndarray, names: list[str], key: str) -> np.ndarray:
    index = [i for i, n in enumerate(names) if n == key or n.startswith(key + "[")]
    if not index:
        raise ConfigError(f"the store's state has no {key} (state names: {', '.join(names)})")
    return state[..., index]


def task_progress(env: str, state: np.ndarray, names: list[str]) -> np.ndarray:
    """How far along the task each state is (higher is better), from privileged sim state."""
    if env == "peg_insert":
        from robot_rl.sim.arm_tasks import INSERTED_DEPTH

        to_mouth = _field(state, names, "tip_to_hole")
        # Distance from the tip to the inserted depth on the hole's axis (deeper counts as there).
        below = np.minimum(to_mouth[..., 2] - INSERTED_DEPTH, 0.0)
        return -np.sqrt((to_mouth[..., :2] ** 2).sum(-1) + below**2)
    if env == "cube_lift":
        reach = np.linalg.norm(_field(state, names, "ee_to_cube"), axis=-1)
        return -reach + 2.0 * np.clip(_field(state, names, "cube_pos")[..., 2] - 0.02, 0.0, 0.1)
    if env == "cube_place":
        from robot_rl.sim.arm_tasks import BIN_HALF, BIN_HEIGHT, CUBE_HALF

        cube, bin_pos = _field(state, names, "cube_pos"), _field(state, names, "bin_pos")
        reach = np.linalg.norm(_field(state, names, "ee_to_cube"), axis=-1)
        to_bin = cube[..., :2] - bin_pos[..., :2]
        lifted = cube[..., 2] > CUBE_HALF + 0.02
        # Staged as the task is judged: a cube resting in the bin beats any carrying, and let go
        # beats still held (the hand backing off after the release is progress, not regress).
        placed = np.all(np.abs(to_bin) < BIN_HALF - CUBE_HALF * 0.5, -1) & (
            cube[..., 2] < BIN_HEIGHT + CUBE_HALF
        )
        released = _field(state, names, "gripper")[..., 0] > 2 * CUBE_HALF + 0.01
        carrying = -0.5 * reach - np.linalg.norm(to_bin, axis=-1) + 0.5 * lifted
        return np.where(placed, np.where(released, 3.0, 2.5), carrying)
    raise ConfigError(f"the simulated VLM knows no progress measure for env {env!r}")


class SimVLMServer:
    """`with SimVLMServer(frames, progress) as server:` ... `server.base_url` (".../v1").

    frames: the stored images (N, H, W, 3); progress: one number per frame. A pair is judged on
    its tiled segments by their last frame's progress. `wrong` is the share of pairs whose
    verdict is flipped (decided per pair, reproducibly from `seed`); `fail_first` answers the
    first requests with HTTP 500, `delay_s` delays every reply (to test retries and timeouts);
    with `api_key`, requests without that bearer token get HTTP 401, as a hosted API answers.
    """

    def __init__(
        self,
        frames: np.ndarray,
        progress: np.ndarray,
        wrong: float = 0.0,
        seed: int = 0,
        fail_first: int = 0,
        delay_s: float = 0.0,
        segment: int = 1,
        model: str = "sim-vlm",
        api_key: str | None = None,
    ):
        if not 0.0 <= wrong <= 1.0:
            raise ConfigError(f"wrong must be in [0, 1], got {wrong}")
        frames = np.asarray(frames)
        self.progress = np.asarray(progress, np.float64)
        self.index: dict[str, int] = {}
        for i in range(len(frames) - segment + 1):  # every segment start, as the labeler may tile them
            self.index.setdefault(frame_hash(tile(frames[i : i + segment])), i + segment - 1)
        self.wrong, self.seed, self.fail_first, self.delay_s = wrong, seed, fail_first, delay_s
        # The judge is part of the model's name, so cached answers of another judge never come back.
        judge = hashlib.sha256(self.progress.tobytes()).hexdigest()[:8]
        self.model = f"{model}(judge={judge}, wrong={wrong}, seed={seed})"
        self.api_key = api_key
        self.requests = 0
        self.stats = {"analyses": 0, "verdicts": 0, "flipped": 0, "unknown_images": 0, "failed": 0}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- judging -----------------------------------------------------------------------------
    def analyse(self, images: list[np.ndarray]) -> str:
        if len(images) != 2:
            return "I need exactly two images to compare."
        found = [self.index.get(frame_hash(im)) for im in images]
        if None in found:
            with self._lock:
                self.stats["unknown_images"] += 1
            return "I cannot tell what these images show. There is no clear difference I can see."
        p = [self.progress[i] for i in found]
        lines = [
            f"Image {k + 1} shows the robot at a progress of {p[k]:.4f} toward the goal." for k in range(2)
        ]
        if abs(p[0] - p[1]) < TIE:
            return "\n".join(lines + ["There is no clear difference between them in achieving the goal."])
        better = 0 if p[0] > p[1] else 1
        digest = hashlib.sha256(f"{self.seed}:{found[0]}:{found[1]}".encode()).digest()
        if int.from_bytes(digest[:8], "little") / 2**64 < self.wrong:
            better = 1 - better
            with self._lock:
                self.stats["flipped"] += 1
        return "\n".join(lines + [f"Image {better + 1} is closer to achieving the goal."])

    @staticmethod
    def verdict(text: str) -> str:
        """The stage-2 answer, read from the analysis quoted in the prompt."""
        found = re.search(r"Image ([12]) is closer to achieving the goal", text)
        if found:
            return (
                f"Based on the analysis, image {found.group(1)} achieves the goal better.\n"
                f"{int(found.group(1)) - 1}"
            )
        return "The analysis shows no clear difference.\n-1"

    def reply(self, body: dict) -> str:
        content = body["messages"][-1]["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        text = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
        images = [
            decode_png(p["image_url"]["url"].split(",", 1)[1]) for p in parts if p.get("type") == "image_url"
        ]
        with self._lock:
            self.stats["analyses" if images else "verdicts"] += 1
        return self.analyse(images) if images else self.verdict(text)

    # --- serving -----------------------------------------------------------------------------
    def __enter__(self) -> SimVLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                with server._lock:
                    server.requests += 1
                    failing = server.requests <= server.fail_first
                if server.delay_s:
                    time.sleep(server.delay_s)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if failing:
                    with server._lock:
                        server.stats["failed"] += 1
                    return self._send(500, {"error": {"message": "injected failure"}})
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                try:
                    body = json.loads(raw)
                    answer = server.reply(body)
                except (ValueError, KeyError, TypeError) as exc:
                    return self._send(400, {"error": {"message": f"bad request: {exc}"}})
                self._send(
                    200,
                    {
                        "id": "sim",
                        "object": "chat.completion",
                        "model": server.model,
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": answer},
                            }
                        ],
                    },
                )

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def sim_vlm_for_store(store_path, image_key: str, segment: int = 1, **kwargs) -> SimVLMServer:
    """The stand-in VLM for one store: its frames and the progress of the state stored with them."""
    from robot_rl.datasets.store import EpisodeStore

    with EpisodeStore.open(store_path) as store:
        env, names = store.attrs.get("env"), store.attrs.get("state_names")
        if not env or not names:
            raise ConfigError(
                f"{store_path} does not say which sim env and state it holds (attributes env, state_names)"
            )
        frames = np.asarray(store.array(image_key)[: store.n_steps])
        state = np.asarray(store.array("obs/state")[: store.n_steps])
    return SimVLMServer(frames, task_progress(env, state, list(names)), segment=segment, **kwargs)
