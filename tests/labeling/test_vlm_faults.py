"""The VLM client against servers that misbehave, on loopback with real sockets: connections closed
mid-reply, garbage status lines, bytes trickled for ever, 429 with Retry-After, a server that dies
after some answers. Each transport fault is a retried failure; a run that loses its server stops
with a non-zero exit, says how many pairs failed, and a rerun resumes from the cache."""

import json
import socket
import socketserver
import threading
import time

import numpy as np
import pytest

from robot_rl.cli import main
from robot_rl.labeling.vlm import (
    LabelCache,
    LabelerError,
    OpenAIChatBackend,
    PairConfig,
    PreferenceLabeler,
    label_store,
    retry_after,
)

REPLY = json.dumps({"choices": [{"message": {"content": "Image 2 is closer.\n1"}}]}).encode()


def ok(sock):
    sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(REPLY), REPLY)
    )


def drop_mid_body(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(REPLY), REPLY[:10]))


def cut_without_length(sock):  # no Content-Length: the cut shows only as a body that is not JSON
    sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + REPLY[:10])


def garbage_status(sock):
    sock.sendall(b"\x16\x03\x01 certainly not HTTP\r\n\r\n")


def trickle(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(600):  # a byte each 0.05 s: every read succeeds, the reply never completes
        sock.sendall(b" ")
        time.sleep(0.05)


def too_many_requests(sock):
    sock.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")


def close_at_once(sock):
    pass


class Server:
    """Answers request i with behaviours[i] (the last one repeats)."""

    def __init__(self, *behaviours):
        self.behaviours, self.requests = list(behaviours), 0
        self.times = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(
                    [
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ][0]
                )
                while len(body) < length:
                    body += self.request.recv(65536)
                with lock:
                    i = outer.requests
                    outer.requests += 1
                    outer.times.append(time.monotonic())
                try:
                    outer.behaviours[min(i, len(outer.behaviours) - 1)](self.request)
                except OSError:
                    pass

        lock = threading.Lock()
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("fault", [drop_mid_body, cut_without_length, garbage_status, close_at_once])
def test_every_transport_fault_is_retried(fault):
    with Server(fault, fault, ok) as server:
        backend = OpenAIChatBackend(server.url, "m", retries=3, backoff_s=0.01, timeout_s=5)
        assert backend.chat("hello").endswith("1")
        assert server.requests == 3 and backend.retried == 2
    with Server(fault) as server:
        backend = OpenAIChatBackend(server.url, "m", retries=1, backoff_s=0.01, timeout_s=5)
        with pytest.raises(LabelerError, match="failed 2 times"):
            backend.chat("hello")


def test_timeout_bounds_the_whole_request_not_each_read():
    with Server(trickle) as server:
        backend = OpenAIChatBackend(server.url, "m", retries=0, timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(LabelerError, match="within timeout_s=0.5"):
            backend.chat("hello")
        assert time.monotonic() - start < 2.0


def test_retry_after_is_honoured_and_capped():
    with Server(too_many_requests, ok) as server:
        backend = OpenAIChatBackend(server.url, "m", retries=2, backoff_s=0.01)
        backend.chat("hello")
        assert server.times[1] - server.times[0] >= 0.95  # the server's 1 s, not the 0.01 s backoff
    with Server(too_many_requests, ok) as server:
        backend = OpenAIChatBackend(server.url, "m", retries=2, backoff_s=0.01, max_retry_after_s=0.1)
        backend.chat("hello")
        assert server.times[1] - server.times[0] < 0.8
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    assert 0 <= retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_backoff_has_jitter():
    with Server(close_at_once) as server:
        waits = []
        for seed in range(2):
            server.times.clear()
            backend = OpenAIChatBackend(server.url, "m", retries=2, backoff_s=0.2, seed=seed)
            with pytest.raises(LabelerError):
                backend.chat("hello")
            waits.append(np.diff(server.times))
        assert not np.allclose(waits[0], waits[1], atol=0.02)
        assert all(
            0.09 < w[0] < 0.4 and 0.19 < w[1] < 0.7 for w in waits
        )  # 0.2 s then 0.4 s, each x [0.5, 1.5]


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8) for _ in range(n)]


def test_a_server_that_dies_mid_run_stops_it_and_a_rerun_resumes(tmp_path):
    cache = LabelCache(tmp_path / "cache.sqlite")
    a, b = frames(40, 0), frames(40, 1)
    # 5 pairs answered (two requests each), then the server is gone
    with Server(*[ok] * 10, close_at_once) as server:
        backend = OpenAIChatBackend(server.url, "m", retries=1, backoff_s=0.0)
        labeler = PreferenceLabeler(
            backend, cache, "task", "m", max_concurrency=1, max_consecutive_failures=4
        )
        with pytest.raises(
            LabelerError, match=r"failed 4 pairs in a row \(4 of 40 in all\).*5 answers are cached"
        ):
            labeler.label(a, b)
        assert server.requests == 10 + 4 * 2  # stopped after 4 failed pairs, not after all 35
    with Server(ok) as server:
        labeler = PreferenceLabeler(OpenAIChatBackend(server.url, "m"), cache, "task", "m", max_concurrency=1)
        answers, report = labeler.label(a, b)
        assert report.cached == 5 and report.failed == 0 and answers == [1] * 40
        assert server.requests == 35 * 2


def test_failed_pairs_beyond_the_share_end_the_run_with_an_error(tmp_path):
    a, b = frames(20, 0), frames(20, 1)
    with Server(close_at_once, ok) as server:  # the first pair fails
        backend = OpenAIChatBackend(server.url, "m", retries=0)
        labeler = PreferenceLabeler(backend, LabelCache(":memory:"), "task", "m", max_concurrency=1)
        with pytest.raises(
            LabelerError,
            match=r"failed 1 of 20 pairs \(more than max_failed_share=0\).*19 answers are cached",
        ):
            labeler.label(a, b)
    with Server(close_at_once, ok) as server:
        backend = OpenAIChatBackend(server.url, "m", retries=0)
        labeler = PreferenceLabeler(
            backend, LabelCache(":memory:"), "task", "m", max_concurrency=1, max_failed_share=0.1
        )
        answers, report = labeler.label(a, b)
        assert report.failed == 1 and report.labels == 19


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from robot_rl.datasets import EpisodeStore

    path = tmp_path_factory.mktemp("faults") / "s.zarr"
    with EpisodeStore.create(
        path, {"obs/image/front": ((8, 8, 3), "uint8")}, fps=10, attrs={"task": "t"}
    ) as s:
        for seed in range(4):
            s.append_episode({"obs/image/front": np.concatenate(frames(10, seed))})
    return path


def test_cli_exit_is_non_zero_when_the_server_dies(store, tmp_path, capsys):
    out = tmp_path / "labels.json"
    with Server(*[ok] * 6, close_at_once) as server:
        args = [
            "label",
            "vlm",
            f"store={store}",
            f"out={out}",
            "pairs=30",
            "max_concurrency=1",
            f"backend.base_url={server.url}",
            "backend.retries=0",
            "max_consecutive_failures=3",
        ]
        assert main(args) == 2
    err = [
        line
        for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
        if line.startswith("robot-rl")
    ]
    assert len(err) == 1 and "3 pairs in a row" in err[0] and "rerun resumes" in err[0]
    assert not out.exists()
    with Server(ok) as server:
        assert main([*args[:-3], f"backend.base_url={server.url}"]) == 0
        report = json.loads(capsys.readouterr().out)["report"]
        assert report["cached"] == 3 and report["failed"] == 0


def test_label_store_passes_the_limits_through(store, tmp_path):
    with Server(close_at_once) as server:
        with pytest.raises(LabelerError, match="failed the first 2 pairs and answered none"):
            label_store(
                store,
                tmp_path / "l.json",
                OpenAIChatBackend(server.url, "m", retries=0),
                PairConfig(pairs=10),
                "m",
                max_concurrency=1,
                progress=False,
                max_consecutive_failures=2,
            )


def test_refused_connection_is_retried_too():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff_s=0.0)
    with pytest.raises(LabelerError, match="failed 3 times.*ConnectionRefused"):
        backend.chat("hello")
    assert backend.requests == 3
