"""Load on `realfake serve`, with micro-batching on and off: `python -m benchmarks.serve_load [--run RUN]`.

For each setting of --batch-wait-ms it starts `realfake serve` on a free 127.0.0.1 port (never another
interface), then runs two phases against it:
- light: --clients concurrent clients, each sending --requests single-image requests (one kept-alive
  connection per client);
- light+heavy: the same, while --heavy clients keep one decode-heavy upload each in flight, which is what
  decoding inside the model lock used to turn into a stall for everyone. --heavy-kind says which: `gradient`
  (default), a smooth RGB PNG of --heavy-side x --heavy-side pixels (a small file that decodes to ~150 MB), or
  `bomb16`, issue 26's 16-bit grey PNG of 7900 x 7900 (121 KB that decode to 125 MB of samples; 48 clients
  with one each once took all 40 of the server's request threads: `--heavy 48 --heavy-kind bomb16`). A heavy
  client refused with 503 waits the Retry-After it was given, as HTTP asks, before it sends again
  (--heavy-ignore-retry-after: at once); `heavy.refused_503` counts those refusals.
It records requests, errors by status, latency p50/p95/p99, images/s, the server's RSS before and after
(VmRSS from /proc), the CPU seconds the server and the clients used during the light requests, the CPU model
and the load average, and writes benchmarks/results/serve/<machine>-<date>-<commit>.json
(...-2.json, ... when that file exists).
The clients are threads of this one process, on the same cores as the server. That is fair only while the
clients need far less CPU than the server: `cpu_s` in each phase says (2026-11-27, 2-core VM: about 0.4 CPU
seconds for the clients against 4-5 for the server per 1,000 light requests), so they were not moved to a
process of their own.
Without --run it first trains a tiny `fast` run on the stand-in data in a temporary folder. Everything is
bounded: each request has a timeout, each phase stops at --max-seconds, and the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import REPO, RESULTS, atomic_write_json, cpu_model, result_path

MINI_DATA = Path(os.environ.get("REALFAKE_SHARED_DATA", REPO.parent / "shared" / "data")) / "standin-cifake-mini.zip"
HOST = "127.0.0.1"  # load goes to this machine only
REQUEST_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(f"[serve_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (the worker processes of `serve --server-workers N`), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def rss_mb(pid: int) -> float | None:
    """Resident memory of the server, summed over its worker processes (VmRSS)."""
    total = None
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total = (total or 0.0) + int(line.split()[1]) / 1024
    return total


def cpu_s(pid: int, tree: bool = True) -> float | None:
    """CPU seconds (user + system, all threads) a process has used, with its live descendants (the server's
    workers) unless `tree` is False (the client: the server is its child, and is counted apart)."""
    total = None
    for p in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total = (total or 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def light_images(n: int = 32) -> list[bytes]:
    """Small photos-to-be of a few sizes: what a client of the API sends one at a time."""
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (64, 48), (96, 96), (128, 80)]
    return [png(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
            for w, h in (sizes[i % len(sizes)] for i in range(n))]


def heavy_image(side: int) -> bytes:
    """A smooth side x side RGB PNG: a small upload that is expensive to decode."""
    ramp = Image.linear_gradient("L").resize((side, side))
    return png(Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90), ramp)))


def bomb16_image(side: int = 7900) -> bytes:
    """Issue 26's file: a black side x side 16-bit grey PNG (121 KB at 7900), written row by row
    so it costs no memory here; the server decodes it to side x side x 2 bytes (125 MB), under every limit."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, row = zlib.compressobj(9), bytes(1 + 2 * side)  # black: deflate at its best ratio, ~1,030:1
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Client:
    """One kept-alive connection; a request that fails is recorded, and the connection is opened again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, data: bytes, name: str) -> tuple[str, float]:
        status, seconds, _ = self.post_for_retry(data, name)
        return status, seconds

    def post_for_retry(self, data: bytes, name: str) -> tuple[str, float, float | None]:
        """(status, seconds, the Retry-After header in seconds or None)."""
        body, ctype = multipart(data, name)
        start = time.perf_counter()
        retry_after = None
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
            self.conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
            resp = self.conn.getresponse()
            resp.read()
            status = str(resp.status)
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(resp.getheader("retry-after"))  # type: ignore[arg-type]
            if resp.getheader("connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as e:
            status = f"error:{type(e).__name__}"
            self.close()
        return status, time.perf_counter() - start, retry_after

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def percentile(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)) * 1000, 1) if xs else None


def summary(records: list[tuple[str, float]], wall_s: float) -> dict[str, Any]:
    ok = [t for s, t in records if s == "200"]
    return {
        "requests": len(records),
        "by_status": dict(Counter(s for s, _ in records)),
        "latency_ms": {"p50": percentile(ok, 50), "p95": percentile(ok, 95), "p99": percentile(ok, 99)},
        "images_per_s": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
        "wall_s": round(wall_s, 2),
    }


def load_phase(port: int, pid: int, args: argparse.Namespace, images: list[bytes], heavy: bytes | None
               ) -> dict[str, Any]:
    """--clients clients x --requests light requests; with `heavy`, --heavy clients keep heavy ones in flight.

    Also records the CPU seconds the server (`pid`) and this client process used during the light requests:
    client and server share the machine's cores, so a client that needs as much CPU as the server caps what
    the server can be shown to do.
    """
    deadline = time.monotonic() + args.max_seconds
    light: list[tuple[str, float]] = []
    heavy_records: list[tuple[str, float]] = []
    retry_afters: list[float] = []
    lock = threading.Lock()
    light_done = threading.Event()

    def light_client(i: int) -> None:
        client = Client(port)
        for j in range(args.requests):
            if time.monotonic() > deadline:
                break
            record = client.post(images[(i * args.requests + j) % len(images)], f"{i}-{j}.png")
            with lock:
                light.append(record)
        client.close()

    def heavy_client() -> None:
        client = Client(port)
        while not light_done.is_set() and time.monotonic() < deadline:
            status, seconds, retry_after = client.post_for_retry(heavy, "heavy.png")  # type: ignore[arg-type]
            with lock:
                heavy_records.append((status, seconds))
                if status == "503" and retry_after is not None:
                    retry_afters.append(retry_after)
            if status == "503" and retry_after is not None and not args.heavy_ignore_retry_after:
                light_done.wait(max(0.0, min(retry_after, deadline - time.monotonic())))
        client.close()

    heavies = [threading.Thread(target=heavy_client, daemon=True) for _ in range(args.heavy if heavy else 0)]
    heavy_start = time.perf_counter()
    for t in heavies:
        t.start()
    if heavies:
        time.sleep(1.0)  # let the heavy uploads reach the server's decoders first
    lights = [threading.Thread(target=light_client, args=(i,), daemon=True) for i in range(args.clients)]
    server_cpu, client_cpu = cpu_s(pid), cpu_s(os.getpid(), tree=False)
    start = time.perf_counter()
    for t in lights:
        t.start()
    for t in lights:
        t.join(max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_S)
    wall = time.perf_counter() - start
    cpu = {"server": cpu_s(pid), "client": cpu_s(os.getpid(), tree=False)}
    light_done.set()
    for t in heavies:
        t.join(REQUEST_TIMEOUT_S)
    result = summary(light, wall)
    result["cpu_s"] = {k: round(v - v0, 2) if v is not None and v0 is not None else None
                       for (k, v), v0 in zip(cpu.items(), (server_cpu, client_cpu), strict=True)}
    if heavy is not None:
        result["heavy"] = summary(heavy_records, time.perf_counter() - heavy_start)
        result["heavy"]["refused_503"] = sum(s == "503" for s, _ in heavy_records)
        result["heavy"]["retry_after_s"] = (
            {"min": min(retry_afters), "median": float(np.median(retry_afters)), "max": max(retry_afters)}
            if retry_afters else None)
    result["stopped_at_max_seconds"] = time.monotonic() > deadline
    return result


@contextlib.contextmanager
def server(run: Path, batch_wait_ms: float, args: argparse.Namespace, work: Path) -> Iterator[tuple[int, int]]:
    """`realfake serve` in a child process on a free loopback port: (port, pid); stopped on the way out."""
    port = free_port()
    logfile = work / f"serve-{batch_wait_ms:g}ms.log"
    cmd = [sys.executable, "-m", "realfake.cli", "serve", str(run), "--host", HOST, "--port", str(port),
           "--device", args.device, "--batch-wait-ms", str(batch_wait_ms), "--max-batch", str(args.max_batch),
           "--server-workers", str(args.workers)]
    if args.heavy_queue is not None:
        cmd += ["--heavy-queue", str(args.heavy_queue)]
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {logfile.read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            time.sleep(0.2)
        if args.workers > 1:
            time.sleep(10)  # /healthz answers from the first worker up; let the others load their models too
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def train_tiny_run(work: Path, device: str) -> Path:
    out = work / "fast-run"
    cmd = [sys.executable, "-m", "realfake.cli", "train", "--model", "fast", "--data", str(MINI_DATA),
           "--epochs", "1", "--device", device, "--out", str(out)]
    log(f"no --run: training a tiny run ({' '.join(cmd[3:])})")
    with open(work / "train.log", "wb") as logfile:
        done = subprocess.run(cmd, cwd=REPO, timeout=1800, stdout=logfile, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"training failed: {(work / 'train.log').read_text()[-2000:]}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run (default: train a tiny `fast` run first)")
    p.add_argument("--clients", type=int, default=50, help="concurrent light clients")
    p.add_argument("--requests", type=int, default=20, help="single-image requests per light client")
    p.add_argument("--heavy", type=int, default=8, help="decode-heavy uploads kept in flight in the second phase")
    p.add_argument("--heavy-kind", choices=("gradient", "bomb16"), default="gradient",
                   help="gradient: a smooth RGB PNG of --heavy-side pixels a side; bomb16: issue 26's 121 KB 16-bit "
                        "grey PNG of 7900 x 7900")
    p.add_argument("--heavy-side", type=int, default=7000, help="pixels per side of the gradient PNG")
    p.add_argument("--heavy-ignore-retry-after", action="store_true",
                   help="heavy clients send again at once after a 503 instead of waiting its Retry-After")
    p.add_argument("--heavy-queue", type=int, default=None,
                   help="the server's `serve --heavy-queue` (default: the server's own default)")
    p.add_argument("--batch-wait-ms", type=float, nargs="+", default=[5.0, 0.0],
                   help="server settings to compare (0: micro-batching off)")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="server processes (`realfake serve --server-workers`)")
    p.add_argument("--max-seconds", type=float, default=300, help="a phase stops sending after this long")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="results folder (the JSON goes in its serve/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": list(os.getloadavg())},
        "settings": {},
        "clients": "threads of the benchmark's own process, on the same machine as the server (see cpu_s)",
    }
    with tempfile.TemporaryDirectory(prefix="realfake-serve-load-") as tmp:
        work = Path(tmp)
        run = args.run or train_tiny_run(work, args.device)
        results["args"]["run"] = str(run)
        images = light_images()
        heavy = bomb16_image() if args.heavy_kind == "bomb16" else heavy_image(args.heavy_side)
        results["heavy_png_bytes"] = len(heavy)
        for wait in args.batch_wait_ms:
            name = f"batch_wait_ms={wait:g}"
            log(f"{name}: starting the server")
            with server(run, wait, args, work) as (port, pid):
                warm = Client(port)  # the first forward passes pick kernels and allocate: not what is measured
                for data in images[:3]:
                    warm.post(data, "warm-up.png")
                warm.close()
                entry: dict[str, Any] = {"rss_mb_before": rss_mb(pid), "load_average_before": list(os.getloadavg())}
                log(f"{name}: light load ({args.clients} clients x {args.requests} requests)")
                entry["light"] = load_phase(port, pid, args, images, None)
                log(f"{name}: light load with {args.heavy} {args.heavy_kind} decode-heavy clients")
                entry["light_with_heavy"] = load_phase(port, pid, args, images, heavy)
                log(f"{name}: heavy clients refused with 503: {entry['light_with_heavy']['heavy']['refused_503']}")
                entry["rss_mb_after"] = rss_mb(pid)
                entry["load_average_after"] = list(os.getloadavg())
            results["settings"][name] = entry
            log(f"{name}: {json.dumps({k: entry[k]['latency_ms'] for k in ('light', 'light_with_heavy')})}")
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    path = result_path("serve", args.out_dir)  # a second run the same day gets -2: the first one's file stays
    atomic_write_json(path, results)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
