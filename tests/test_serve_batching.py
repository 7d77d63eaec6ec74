"""Dynamic batching, and the service under misbehaving clients on a real loopback socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
from _serve import config, engine, jpeg_bytes, live_server, small_gallery, tiny_clip  # noqa: E402
from geoalign.serve.batching import Batcher, QueueFull  # noqa: E402

__all__ = ["config", "engine", "small_gallery", "tiny_clip"]  # fixtures


def _double(calls):
    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        time.sleep(0.01)
        return x * 2

    return fn


def test_concurrent_submits_share_one_batch_in_order():
    calls: list[int] = []

    async def main():
        batcher = Batcher(
            _double(calls), ThreadPoolExecutor(1), max_batch=8, max_wait_s=0.2, max_queue=64
        )
        items = [[torch.full((2,), float(i))] for i in range(8)]
        out = await asyncio.gather(*(batcher.submit_many(x) for x in items))
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert calls == [8]  # eight requests, one backbone call (max_batch reached before the wait)
    assert [float(rows[0][0]) for rows in out] == [2.0 * i for i in range(8)]


def test_max_batch_splits_and_max_wait_runs_a_lone_image():
    calls: list[int] = []

    async def main():
        batcher = Batcher(
            _double(calls), ThreadPoolExecutor(1), max_batch=3, max_wait_s=0.01, max_queue=64
        )
        await asyncio.gather(*(batcher.submit_many([torch.ones(1)]) for _ in range(7)))
        started = time.perf_counter()
        await batcher.submit_many([torch.ones(1)])  # alone: runs after max_wait, not never
        waited = time.perf_counter() - started
        await batcher.stop()
        return waited

    waited = asyncio.run(main())
    assert calls[:3] == [3, 3, 1] and calls[3] == 1 and waited < 1.0


def test_full_queue_refuses_and_a_cancelled_request_leaves_it():
    calls: list[int] = []

    async def main():
        batcher = Batcher(
            _double(calls), ThreadPoolExecutor(1), max_batch=4, max_wait_s=0.5, max_queue=2
        )
        first = asyncio.ensure_future(batcher.submit_many([torch.ones(1), torch.ones(1)]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit_many([torch.ones(1)])
        first.cancel()
        await asyncio.sleep(0.01)
        assert batcher.depth == 2  # cancelled futures are skipped when the batch forms
        await asyncio.sleep(0.6)
        assert batcher.depth == 0
        await batcher.stop()

    asyncio.run(main())
    assert calls == []  # nothing computed for a request that went away


def test_live_server_batches_concurrent_requests(config, engine):
    import httpx

    from geoalign.serve.app import create_app
    from geoalign.serve.config import ServeConfig

    slow = ServeConfig(**{**config.__dict__, "max_wait_ms": 200.0, "max_batch": 8})
    photos = [jpeg_bytes(i) for i in range(6)]
    with live_server(create_app(slow, engine)) as url:
        alone = [
            httpx.post(f"{url}/v1/predict", files={"image": ("p.jpg", p)}, timeout=30).json()
            for p in photos[:1]
        ]
        results: list = [None] * len(photos)

        def call(i):
            res = httpx.post(f"{url}/v1/predict", files={"image": ("p.jpg", photos[i])}, timeout=30)
            results[i] = res.json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(photos))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{url}/metrics").text
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("geoalign_batch_size_count")
    )
    total = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("geoalign_batch_size_sum")
    )
    assert total == 7 and count < 7  # 7 images in fewer backbone batches
    a, b = alone[0]["results"][0]["predictions"], results[0]["results"][0]["predictions"]
    assert [p["gallery_index"] for p in a] == [p["gallery_index"] for p in b]
    assert [p["prob"] for p in a] == pytest.approx([p["prob"] for p in b], rel=1e-4)


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


HEAD = (
    "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    "Content-Length: {n}\r\n\r\n"
)


PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'


def test_trickle_times_out_and_disconnects_leave_the_service_healthy(config, engine):
    import httpx

    from geoalign.serve.app import create_app
    from geoalign.serve.config import ServeConfig

    quick = ServeConfig(**{**config.__dict__, "timeout_s": 1.0})
    with live_server(create_app(quick, engine)) as url:
        trickle = _raw(url)
        trickle.sendall(HEAD.format(n=100_000).encode() + PART)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 8:
            try:
                trickle.sendall(b"x")  # one byte at a time, never finishing
            except OSError:
                break
            trickle.settimeout(0.2)
            try:
                answer += trickle.recv(4096)
            except TimeoutError:
                pass
            if httpx.get(f"{url}/healthz", timeout=5).status_code != 200:
                raise AssertionError("healthz failed while a client trickled")
        deadline = time.monotonic() + 5  # the headers can arrive before the body: read to EOF
        while b"longer than" not in answer and time.monotonic() < deadline:
            try:
                chunk = trickle.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        trickle.close()
        assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
        assert b"longer than the service's limit" in answer
        for _ in range(3):  # uploads cut off halfway
            gone = _raw(url)
            gone.sendall(HEAD.format(n=50_000).encode() + PART + b"y" * 1000)
            gone.close()
        garbage = httpx.post(
            f"{url}/v1/predict",
            content=b"\x00\x01garbage" * 100,
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        assert 400 <= garbage.status_code < 500 and "error" in garbage.json()
        assert httpx.get(f"{url}/healthz").status_code == 200
        ok = httpx.post(f"{url}/v1/predict", files={"image": ("p.jpg", jpeg_bytes())}, timeout=30)
        assert ok.status_code == 200 and ok.json()["results"][0]["predictions"]
