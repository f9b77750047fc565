"""Preference labels from a vision-language model, as RL-VLM-F queries them: frame pairs from two
random episodes of an EpisodeStore, a two-stage prompt (analysis with both images, then a
text-only verdict from that analysis), answers 0 (the first is better), 1 (the second) or -1.

Backends: `OpenAIChatBackend` (any OpenAI-compatible chat-completions server: vLLM, Ollama,
SGLang, hosted APIs; stdlib HTTP, images as base64 PNG) and `TransformersBackend` (a local
vision-language model, `vlm` extra). `LabelCache` keeps every answer on disk keyed by the two
frames' hashes, the prompt and the model, so a re-run or a resumed run asks nothing twice.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import socket
import sqlite3
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from robot_rl.errors import ConfigError, RobotRLError
from robot_rl.utils.images import encode_png, frame_hash, tile

# RL-VLM-F's two stages (Wang et al. 2024, Appendix): the analysis sees both images, the verdict
# only the analysis.
ANALYSIS_PROMPT = (
    "Consider the following two images:\nImage 1:\n<image 1>\nImage 2:\n<image 2>\n"
    "1. What is shown in Image 1?\n2. What is shown in Image 2?\n"
    "3. The goal is {task}. Is there any difference between Image 1 and Image 2 "
    "in terms of achieving the goal?"
)
VERDICT_PROMPT = (
    "Based on the text below to the questions:\n1. What is shown in Image 1?\n2. What is shown in Image 2?\n"
    "3. The goal is {task}. Is there any difference between Image 1 and Image 2 "
    "in terms of achieving the goal?\n"
    "{analysis}\n\n"
    "Is the goal better achieved in Image 1 or Image 2?\n"
    "Reply a single line of 0 if the goal is better achieved in Image 1, "
    "or 1 if it is better achieved in Image 2.\n"
    "Reply -1 if the text is unsure or there is no difference."
)


class LabelerError(RobotRLError):
    """The VLM could not be reached or refused the request (after retries)."""


def parse_answer(text: str) -> int | None:
    """0, 1 or -1 from the verdict's reply (its last line that holds one of them); None when unparsable."""
    for line in reversed(text.strip().splitlines()):
        found = re.findall(r"(?<![\w.-])(-1|0|1)(?!\w|\.\d)", line)
        if found:
            return int(found[-1])
    return None


# --- backends -----------------------------------------------------------------------------------
class OpenAIChatBackend:
    """POST {base_url}/chat/completions with `model` and the messages; the API key (if any) from the
    environment variable `api_key_env`.

    Every transport failure (connection refused or reset, a connection closed mid-reply, a garbage
    status line, TLS errors, a request that outlives `timeout_s`), 429 and 5xx are retried with
    exponential backoff and jitter, or after the server's Retry-After (capped at
    `max_retry_after_s`); other HTTP errors (a bad key, an unknown model) fail at once.
    `timeout_s` bounds the whole request, not each socket read: a server that trickles bytes is
    cut off when it runs out."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_tokens: int = 512,
        temperature: float = 0.0,
        max_retry_after_s: float = 60.0,
        seed: int | None = None,
    ):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"base_url must be http(s)://host[:port]/path, got {base_url!r}")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_retry_after_s < 0:
            raise ConfigError(
                "timeout_s must be positive; retries, backoff_s and max_retry_after_s at least 0"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._parts = urllib.parse.urlsplit(self.url)
        self.model, self.timeout_s, self.retries, self.backoff_s = model, timeout_s, retries, backoff_s
        self.max_tokens, self.temperature, self.max_retry_after_s = max_tokens, temperature, max_retry_after_s
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.requests = self.retried = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def chat(self, text: str, images: list[np.ndarray] = ()) -> str:
        content = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encode_png(im)}"}}
            for im in images
        ]
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            with self._lock:
                self.requests += 1
            wait = None
            try:
                status, reply_headers, data = self._post(body, headers)
                if status == 200:
                    try:
                        reply = json.loads(data)
                    except ValueError:  # a body cut short (no Content-Length to tell): transient
                        raise http.client.IncompleteRead(data) from None
                    return reply["choices"][0]["message"]["content"] or ""
                if status != 429 and status < 500:
                    raise LabelerError(
                        f"{self.url} answered HTTP {status}: {data[:200].decode(errors='replace')}"
                    )
                error, wait = f"HTTP {status}", retry_after(reply_headers.get("Retry-After"))
            except (http.client.HTTPException, OSError) as exc:  # OSError: sockets, TLS, timeouts
                error = f"{type(exc).__name__}: {exc}"
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise LabelerError(f"{self.url} sent a reply that is not a chat completion ({exc})") from None
            if attempt < self.retries:
                with self._lock:
                    self.retried += 1
                    jitter = self._rng.uniform(0.5, 1.5)
                # Jitter spreads concurrent requests: backoff x [0.5, 1.5]; the server's Retry-After
                # (capped) x [1, 1.2], never sooner than it asked.
                if wait is None:
                    time.sleep(self.backoff_s * 2**attempt * jitter)
                else:
                    time.sleep(min(wait, self.max_retry_after_s) * (1 + (jitter - 0.5) / 5))
        tries = self.retries + 1
        raise LabelerError(f"{self.url} failed {tries} time{'s' if tries > 1 else ''}; last: {error}")

    def _post(self, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one POST, all of it within `timeout_s`: a timer shuts the
        socket down when the time is up, which ends a read that is still waiting for bytes."""
        parts = self._parts
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=self.timeout_s)
        expired = threading.Event()

        def cut_off() -> None:
            expired.set()
            sock = conn.sock  # one read: close() in the caller may set it to None meanwhile
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass

        timer = threading.Timer(self.timeout_s, cut_off)
        timer.daemon = True
        timer.start()
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.connect()
            if expired.is_set():  # the time ran out before there was a socket to shut down
                raise TimeoutError("connecting took the whole timeout")
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if expired.is_set():  # a body without Content-Length ends quietly when the socket is shut
                raise TimeoutError("cut off")
            return response.status, dict(response.getheaders()), data
        except (http.client.HTTPException, OSError):
            if expired.is_set():
                raise TimeoutError(f"no complete reply within timeout_s={self.timeout_s:g} s") from None
            raise
        finally:
            timer.cancel()
            conn.close()


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class TransformersBackend:
    """A local vision-language model (e.g. a Qwen2-VL or LLaVA checkpoint folder) through
    transformers' image-text-to-text models and the processor's chat template. `vlm` extra."""

    def __init__(self, path: str, max_new_tokens: int = 512, device: str = "cpu"):
        if not Path(path).exists():
            raise ConfigError(
                f"no local model at {path} (give the folder of a downloaded vision-language model)"
            )
        try:
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError:
            raise ConfigError(
                "the transformers backend needs the vlm extra: pip install -e '.[vlm]'"
            ) from None
        self.processor = AutoProcessor.from_pretrained(path)
        self._model = AutoModelForImageTextToText.from_pretrained(path).to(device).eval()
        self.model_name, self.max_new_tokens, self.device = Path(path).name, max_new_tokens, device
        self._lock = threading.Lock()  # one generation at a time
        self.requests = self.retried = 0

    def chat(self, text: str, images: list[np.ndarray] = ()) -> str:
        import torch
        from PIL import Image

        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        inputs = self.processor(
            text=prompt, images=[Image.fromarray(im) for im in images] or None, return_tensors="pt"
        )
        with self._lock, torch.no_grad():
            self.requests += 1
            out = self._model.generate(
                **inputs.to(self.device), max_new_tokens=self.max_new_tokens, do_sample=False
            )
        return self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


# --- the cache ----------------------------------------------------------------------------------
class LabelCache:
    """Answers on disk (sqlite), keyed by both frames' hashes, the prompts and the model."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers "
            "(key TEXT PRIMARY KEY, answer INTEGER, analysis TEXT, verdict TEXT)"
        )
        self._db.commit()
        self._lock = threading.Lock()

    @staticmethod
    def key(hash_a: str, hash_b: str, prompt: str, model: str) -> str:
        return hashlib.sha256("\0".join([hash_a, hash_b, prompt, model]).encode()).hexdigest()

    def get(self, key: str) -> tuple[int | None, str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT answer, analysis, verdict FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return row

    def put(self, key: str, answer: int | None, analysis: str, verdict: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", (key, answer, analysis, verdict)
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()


# --- pairs and labeling -------------------------------------------------------------------------
@dataclass
class PairConfig:
    pairs: int = 1000
    image_key: str = "obs/image/front"
    segment: int = 1  # frames per side; > 1: a segment, its frames tiled side by side for the VLM
    near_end: float = 1.0  # draw frames from the last `near_end` share of each episode (1: anywhere)
    seed: int = 0

    def __post_init__(self):
        if self.pairs < 1 or self.segment < 1 or not 0.0 < self.near_end <= 1.0:
            raise ConfigError("pairs and segment must be at least 1, near_end in (0, 1]")


def sample_pairs(episode_ends: np.ndarray, cfg: PairConfig) -> np.ndarray:
    """(pairs, 2) global start steps: for each pair two different random episodes and one random
    frame (segment start) from each, as RL-VLM-F samples them."""
    rng = np.random.default_rng(cfg.seed)
    ends = np.asarray(episode_ends)
    starts = np.concatenate([[0], ends[:-1]])
    usable = np.flatnonzero(ends - starts >= cfg.segment)
    if len(usable) < 2:
        raise ConfigError(f"pairs need two episodes of at least {cfg.segment} steps")
    out = np.zeros((cfg.pairs, 2), np.int64)
    for i in range(cfg.pairs):
        for side, e in enumerate(rng.choice(usable, 2, replace=False)):
            length = ends[e] - starts[e]
            first = int(np.floor((1.0 - cfg.near_end) * (length - cfg.segment)))
            out[i, side] = starts[e] + rng.integers(first, length - cfg.segment + 1)
    return out


@dataclass
class LabelReport:
    pairs: int = 0
    labels: int = 0  # kept: answers 0 or 1
    answers: dict = field(default_factory=lambda: {"0": 0, "1": 0, "-1": 0, "unparsable": 0})
    identical: int = 0  # dropped without asking
    cached: int = 0  # answered from the cache
    failed: int = 0  # the backend gave up (after retries)
    requests: int = 0
    retried: int = 0
    seconds: float = 0.0


class PreferenceLabeler:
    """Asks `backend` about pairs of frames with the two-stage prompt, through `cache`. A pair the
    backend fails (after its retries) is counted and skipped. Labeling stops with a LabelerError
    after `max_consecutive_failures` failed pairs in a row (a server that died), and ends with one
    when more than `max_failed_share` of the pairs failed; every answer is cached either way, so
    a rerun asks only what is missing."""

    def __init__(
        self,
        backend,
        cache: LabelCache,
        task: str,
        model: str,
        max_concurrency: int = 4,
        max_consecutive_failures: int = 8,
        max_failed_share: float = 0.0,
    ):
        if max_concurrency < 1 or max_consecutive_failures < 1 or not 0.0 <= max_failed_share <= 1.0:
            raise ConfigError(
                "max_concurrency and max_consecutive_failures must be at least 1, max_failed_share in [0, 1]"
            )
        self.backend, self.cache, self.task, self.model = backend, cache, task, model
        self.max_concurrency, self.max_consecutive_failures = max_concurrency, max_consecutive_failures
        self.max_failed_share = max_failed_share
        self.analysis_prompt = ANALYSIS_PROMPT.format(task=task)
        self.prompt_id = hashlib.sha256((ANALYSIS_PROMPT + VERDICT_PROMPT + task).encode()).hexdigest()[:16]

    def ask(self, image_a: np.ndarray, image_b: np.ndarray) -> tuple[int | None, str, str]:
        """(answer or None, the analysis, the verdict's text): stage 1 with both images, stage 2 from its
        analysis."""
        analysis = self.backend.chat(self.analysis_prompt, [image_a, image_b])
        verdict = self.backend.chat(VERDICT_PROMPT.format(task=self.task, analysis=analysis))
        return parse_answer(verdict), analysis, verdict

    def label(
        self, frames_a: list[np.ndarray], frames_b: list[np.ndarray], progress=None
    ) -> tuple[list[int | None], LabelReport]:
        """One answer per pair (None where dropped: identical, unsure, unparsable or failed)."""
        report = LabelReport(pairs=len(frames_a))
        start = time.monotonic()
        answers: list[int | None] = [None] * len(frames_a)
        lock = threading.Lock()
        give_up, errors, in_a_row, gave_up_at = threading.Event(), [], [0], [0]

        def one(i: int) -> None:
            if give_up.is_set():
                return
            try:
                ask_one(i)
            finally:
                if progress is not None:
                    progress()

        def ask_one(i: int) -> None:
            a, b = tile(frames_a[i]), tile(frames_b[i])
            ha, hb = frame_hash(a), frame_hash(b)
            if ha == hb:
                with lock:
                    report.identical += 1
                return
            key = LabelCache.key(ha, hb, self.prompt_id, self.model)
            hit = self.cache.get(key)
            if hit is not None:
                answer = hit[0]
                with lock:
                    report.cached += 1
            else:
                try:
                    answer, analysis, verdict = self.ask(a, b)
                except LabelerError as exc:
                    with lock:
                        report.failed += 1
                        errors.append(str(exc))
                        in_a_row[0] += 1
                        # A backend that stopped answering (wrong URL, server down) fails every pair
                        # after its retries: stop rather than wait through all of them.
                        if in_a_row[0] >= self.max_consecutive_failures and not give_up.is_set():
                            gave_up_at[0] = in_a_row[0]
                            give_up.set()
                    return
                self.cache.put(key, answer, analysis, verdict)
            with lock:
                in_a_row[0] = 0
                report.answers["unparsable" if answer is None else str(answer)] += 1
                if answer in (0, 1):
                    answers[i] = answer
                    report.labels += 1

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            list(pool.map(one, range(len(frames_a))))
        answered = sum(report.answers.values())
        resume = f"; the {answered} answers are cached, so a rerun resumes from them" if answered else ""
        if give_up.is_set():
            what = (
                f"failed the first {report.failed} pairs and answered none"
                if not answered
                else f"failed {gave_up_at[0]} pairs in a row ({report.failed} of {report.pairs} in all)"
            )
            raise LabelerError(f"the VLM {what}; last error: {errors[-1]}{resume}")
        if report.failed > self.max_failed_share * report.pairs:
            raise LabelerError(
                f"the VLM failed {report.failed} of {report.pairs} pairs (more than max_failed_share="
                f"{self.max_failed_share:g}); last error: {errors[-1]}{resume}"
            )
        report.requests = getattr(self.backend, "requests", 0)
        report.retried = getattr(self.backend, "retried", 0)
        report.seconds = time.monotonic() - start
        return answers, report


def label_store(
    store_path,
    out,
    backend,
    cfg: PairConfig,
    model: str,
    cache_path=None,
    max_concurrency: int = 4,
    progress: bool = True,
    max_consecutive_failures: int = 8,
    max_failed_share: float = 0.0,
) -> dict:
    """Sample pairs from the store, label them, and write `out` (JSON: the kept pairs with their
    labels, the pair settings, model, prompt and report). Resumable through the cache."""
    from tqdm import tqdm

    from robot_rl.datasets.store import EpisodeStore

    with EpisodeStore.open(store_path) as store:
        if cfg.image_key not in store.keys:
            raise ConfigError(
                f"{store_path} has no {cfg.image_key} (image keys: {', '.join(store.image_keys()) or 'none'})"
            )
        task = str(store.attrs.get("task") or "")
        if not task:
            raise ConfigError(f"{store_path} names no task (attribute 'task'), which the prompt needs")
        starts = sample_pairs(store.episode_ends, cfg)
        images = store.array(cfg.image_key)
        frames = [[np.asarray(images[s : s + cfg.segment]) for s in pair] for pair in starts]
    out = Path(out)
    cache = LabelCache(cache_path or out.with_suffix(".cache.sqlite"))
    labeler = PreferenceLabeler(
        backend, cache, task, model, max_concurrency, max_consecutive_failures, max_failed_share
    )
    bar = tqdm(total=len(frames), desc="label vlm", unit="pair", disable=not progress, dynamic_ncols=True)
    try:
        answers, report = labeler.label(
            [f[0] for f in frames], [f[1] for f in frames], progress=lambda: bar.update(1)
        )
    finally:
        bar.close()
        cache.close()
    kept = [i for i, a in enumerate(answers) if a is not None]
    result = {
        "store": str(store_path),
        "model": model,
        "prompt_id": labeler.prompt_id,
        "task": task,
        "analysis_prompt": ANALYSIS_PROMPT,
        "verdict_prompt": VERDICT_PROMPT,
        "pair_config": asdict(cfg),
        "pairs": [[int(starts[i, 0]), int(starts[i, 1])] for i in kept],
        "labels": [answers[i] for i in kept],
        "report": asdict(report),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return result
