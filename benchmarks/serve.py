"""`geoalign serve` under load and under faults, on loopback only (127.0.0.1).

    .venv/bin/python benchmarks/serve.py [--quick] [--no-vit]

- load: C concurrent clients x N requests each (bounded; the run stops by itself) against a
  server in a separate process: p50/p99 latency, requests/s, failures, the server's RSS over
  the run; for a tiny random CLIP tower and for a ViT-L/14-sized random one (same cost as the
  real weights, which this machine cannot download), with dynamic batching and one image at a
  time (--max-batch 1).
- faults: while normal clients keep predicting, others disconnect mid-upload, send garbage
  and truncated multipart bodies, oversized files, and trickle bytes slowly; /healthz is polled
  throughout. Every normal request must succeed and every health probe answer 200.

Writes the "Serve" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

warnings.filterwarnings("ignore")
HOST = "127.0.0.1"  # never anything else: this benchmark must not leave the machine
TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=16,
    projection_dim=768,
)
VIT_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=768,
)


# ----------------------------------------------------------------------------- the server process
def _serve(size: str, port: int, max_batch: int, timeout_s: float, wait_ms: float) -> None:
    """Child process: a Geolocator with a random CLIP tower of `size`, the 100K gallery, served
    by uvicorn on 127.0.0.1:port until killed."""
    import torch
    import uvicorn
    from transformers import CLIPVisionConfig

    from geoalign.data.galleries import load_gallery
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import checkpoint_config, load_model
    from geoalign.nn.backbones import ClipBackbone
    from geoalign.serve.app import create_app
    from geoalign.serve.config import ServeConfig
    from geoalign.serve.engine import Engine, model_card

    torch.manual_seed(0)
    backbone = ClipBackbone.from_config(CLIPVisionConfig(**(TINY if size == "tiny" else VIT_L14)))
    geo = Geolocator(load_model("geoclip"), backbone=backbone, gallery=load_gallery("geoclip-100k"))
    config = ServeConfig(
        backbone=f"random-{size}",
        max_batch=max_batch,
        max_wait_ms=wait_ms,
        max_queue=256,
        max_upload_mb=2.0,
        timeout_s=timeout_s,
    )
    engine = Engine(geo, config, model_card(config, checkpoint_config("geoclip"), geo))
    uvicorn.run(
        create_app(config, engine), host=HOST, port=port, log_level="warning", access_log=False
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self, size: str, max_batch: int, timeout_s: float = 900.0, wait_ms: float = 5.0
    ) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        args = [sys.executable, __file__, "--child", size, str(self.port), str(max_batch)]
        wait = wait_ms if max_batch > 1 else 0.0
        self.proc = subprocess.Popen([*args, str(timeout_s), str(wait)], env=os.environ.copy())

    def wait_ready(self, limit_s: float = 600) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < limit_s:
            if self.proc.poll() is not None:
                raise RuntimeError("the server process exited")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ----------------------------------------------------------------------------- clients
def _photos(n: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


async def _load(server: Server, clients: int, per_client: int, photos: list[bytes]) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests one after another."""
    import httpx

    latencies: list[float] = []
    failures = 0
    rss: list[float] = []

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        for j in range(per_client):
            photo = photos[(i * per_client + j) % len(photos)]
            t = time.perf_counter()
            try:
                res = await http.post("/v1/predict", files={"image": ("p.jpg", photo)})
                ok = res.status_code == 200 and "predictions" in res.json()["results"][0]
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t)
            failures += not ok

    async def sample_rss(stop: asyncio.Event) -> None:
        while not stop.is_set():
            rss.append(server.rss_mb())
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=900, limits=limits) as http:
        warm = [http.post("/v1/predict", files={"image": ("w.jpg", p)}) for p in photos]
        await asyncio.gather(*warm)  # warm-up: place index, thread pools, allocator arenas
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - started
        stop.set()
        await sampler
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": failures,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / wall,
        "rss_first": rss[0] if rss else float("nan"),
        "rss_last": rss[-1] if rss else float("nan"),
        "rss_max": max(rss) if rss else float("nan"),
    }


async def _raw(port: int, data: bytes, *, close_after: float = 0.0, trickle: bool = False) -> str:
    """Send raw bytes (optionally one per 50 ms), then close; what the server answered first."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        if trickle:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                try:  # one byte per 50 ms, listening for the server's answer in between
                    line = await asyncio.wait_for(reader.readline(), 0.05)
                except TimeoutError:
                    continue
                return line.decode("latin-1").split(" ")[1] if line else "closed"
        else:
            writer.write(data)
            await writer.drain()
        if close_after:
            await asyncio.sleep(close_after)
            return "closed"
        line = await asyncio.wait_for(reader.readline(), 30)
        return line.decode("latin-1").split(" ")[1] if line else "closed"
    except (ConnectionError, TimeoutError, IndexError):
        return "closed"
    finally:
        writer.close()


def _multipart_head(length: int, boundary: str = "b") -> bytes:
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="f.jpg"\r\n\r\n'
    ).encode()


async def _faults(server: Server, photos: list[bytes], rounds: int) -> dict:
    """Normal clients and faulty ones at once, /healthz polled every 100 ms."""
    import httpx

    health = {"ok": 0, "bad": 0}
    outcomes: dict[str, list[str]] = {}
    normal = {"ok": 0, "bad": 0}

    async def poll(stop: asyncio.Event, http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                res = await http.get("/healthz", timeout=5)
                health["ok" if res.status_code == 200 else "bad"] += 1
            except httpx.HTTPError:
                health["bad"] += 1
            await asyncio.sleep(0.1)

    async def good(http: httpx.AsyncClient) -> None:
        for i in range(rounds):
            res = await http.post("/v1/predict", files={"image": ("p.jpg", photos[i % 4])})
            if res.status_code == 200:
                normal["ok"] += 1
            else:
                normal.setdefault("codes", []).append(res.status_code)
                normal["bad"] += 1

    async def bad(kind: str, http: httpx.AsyncClient) -> None:
        for _ in range(rounds):
            try:
                got = await misbehave(kind, http)
            except (httpx.HTTPError, OSError) as err:  # the client's side of a cut connection
                got = f"client saw {type(err).__name__}"
            outcomes.setdefault(kind, []).append(got)

    async def misbehave(kind: str, http: httpx.AsyncClient) -> str:
        port = server.port
        if kind == "disconnect mid-upload":
            return await _raw(port, _multipart_head(200_000) + b"x" * 5000, close_after=0.05)
        elif kind == "garbage multipart":
            return await _raw(port, _multipart_head(64, "zz")[:-60] + os.urandom(64))
        elif kind == "truncated multipart":
            body = photos[0][: len(photos[0]) // 2]
            head = _multipart_head(len(body) + 40)
            return await _raw(port, head + body, close_after=0.5)
        elif kind == "oversized file":  # declares 3 MB (limit 2 MB), sends the first 64 KB
            return await _raw(port, _multipart_head(3 * 1024 * 1024) + b"\xff" * 65536)
        else:  # slow trickle: one byte per 50 ms until the server's timeout answers
            return await _raw(port, _multipart_head(100_000) + b"y" * 200, trickle=True)

    kinds = [
        "disconnect mid-upload",
        "garbage multipart",
        "truncated multipart",
        "oversized file",
        "slow trickle",
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        stop = asyncio.Event()
        poller = asyncio.create_task(poll(stop, http))
        await asyncio.gather(*(good(http) for _ in range(4)), *(bad(k, http) for k in kinds))
        stop.set()
        await poller
        alive = (await http.get("/healthz")).status_code
    return {"health": health, "normal": normal, "outcomes": outcomes, "alive": alive}


# ----------------------------------------------------------------------------- the report
def _row(name: str, clients: int, r: dict) -> str:
    drift = 100 * (r["rss_last"] - r["rss_first"]) / r["rss_first"]
    return (
        f"| {name} | {clients} | {r['requests']} | {r['failures']} | {r['p50_ms']:.0f} | "
        f"{r['p99_ms']:.0f} | {r['rps']:.1f} | {r['rss_first']:.0f} → {r['rss_last']:.0f} "
        f"({drift:+.1f}%, max {r['rss_max']:.0f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT-L/14-sized model")
    args = parser.parse_args()
    photos = _photos(8)
    rows, notes = [], []
    per = 4 if args.quick else 16
    tiny_runs = (
        ("tiny, dynamic batching (5 ms wait)", 16, 5.0),
        ("tiny, dynamic batching (no wait)", 16, 0.0),
        ("tiny, one at a time", 1, 0.0),
    )
    for name, batch, wait_ms in tiny_runs:
        server = Server("tiny", batch, wait_ms=wait_ms)
        try:
            ready = server.wait_ready()
            r = asyncio.run(_load(server, 32, per, photos))
        finally:
            server.stop()
        rows.append(_row(name, 32, r))
        notes.append(f"{name}: ready in {ready:.1f} s")
    ratio = None
    if not args.no_vit:
        vit = {}
        for name, batch in (("ViT-L/14, dynamic batching", 16), ("ViT-L/14, one at a time", 1)):
            server = Server("vit", batch)
            try:
                server.wait_ready()
                vit[name] = asyncio.run(_load(server, 16, 1, photos))
            finally:
                server.stop()
            rows.append(_row(name, 16, vit[name]))
        batched, single = vit.values()
        ratio = batched["rps"] / single["rps"]
    server = Server("tiny", 16, timeout_s=5.0)
    try:
        server.wait_ready()
        f = asyncio.run(_faults(server, photos, 3 if args.quick else 6))
    finally:
        server.stop()
    table = "\n".join(
        [
            "| server | clients | requests | failed | p50 ms | p99 ms | req/s | server RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
        ]
    )
    outcomes = "\n".join(
        f"- {kind}: answered {', '.join(sorted(set(got)))} ({len(got)} tries)"
        for kind, got in f["outcomes"].items()
    )
    body = f"""
Loopback only (127.0.0.1), server in its own process (uvicorn, one worker, 100K gallery,
GeoCLIP head, random CLIP towers: the cost of the real weights), 640x480 JPEG uploads, each
client sending its requests one after another. `benchmarks/serve.py{" --quick" if args.quick else ""}`.

{table}

{"Dynamic batching vs one image at a time, ViT-L/14-sized, 16 clients: **" + f"{ratio:.2f}x" + "** the requests/s." if ratio else ""}
{"; ".join(notes)}.

Fault run (tiny model, 5 s request timeout): 4 normal clients predicting while others misbehave.
Normal requests: {f["normal"]["ok"]} ok, {f["normal"]["bad"]} failed; `/healthz` polled every
100 ms: {f["health"]["ok"]} answered 200, {f["health"]["bad"]} did not; after the run: {f["alive"]}.
{outcomes}
"""
    write_section("Serve: load and faults", body)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _serve(
            sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
        )
    else:
        tempfile.tempdir = tempfile.gettempdir()
        main()
