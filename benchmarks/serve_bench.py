"""Soak benchmark of `sai serve`: mixed KServe v2 (HTTP JSON, HTTP binary, gRPC) and /v1 (raw, JSON) requests from
concurrent clients against a server process, with p50/p99 per kind, throughput, unexpected errors and the server
process's RSS before and after; optionally the old server (any git revision's ``runtime/serve.py``, /v1 only) in
the same run, on the same /v1 load, as ratios.

    python -m sai.benchmarks.serve_bench OUTDIR [--requests 10000] [--clients 8] [--baseline-rev 93f1d37]

A benchmark, not a test: it prints numbers and exits 0 unless a request failed unexpectedly (exit 1).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from sai.benchmarks.procs import free_port, rss_mib

KINDS_NEW = ("v2_http_json", "v2_http_binary", "v2_grpc", "v1_raw", "v1_json")
KINDS_OLD = ("v1_raw", "v1_json")

_OLD_MAIN = """
import sys, importlib.util
spec = importlib.util.spec_from_file_location("sai_serve_baseline", sys.argv[1])
old = importlib.util.module_from_spec(spec); sys.modules[spec.name] = old; spec.loader.exec_module(old)
import sai.runtime as rt
engine = rt.load(sys.argv[2], backend=sys.argv[3], threads=int(sys.argv[4]))
srv = old.InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=float(sys.argv[5]), max_queue=256)
old.serve_forever(srv, on_ready=lambda s: print(f"listening on {s.url}", flush=True))
"""


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    def __init__(self, cmd: list[str], grpc_port: Optional[int] = None):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise SystemExit(f"server did not start: {line.strip()} {err.strip()[-500:]}")
        self.port = int(line.split("127.0.0.1:")[1].split()[0].rstrip(",)"))
        self.grpc_port = grpc_port

    def rss(self) -> float:
        return rss_mib(self.proc.pid)

    def cpu(self) -> float:
        return _cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


class Client:
    """One client thread's connections (keep-alive HTTP, tritonclient HTTP and gRPC) and the request kinds."""

    def __init__(self, port: int, grpc_port: Optional[int], model: str, x: np.ndarray):
        self.port, self.grpc_port, self.model, self.x = port, grpc_port, model, x
        self.conn: Optional[http.client.HTTPConnection] = None
        self._http = self._grpc = None
        self.raw = x.tobytes()
        self.v1_json = json.dumps({"inputs": x.tolist()}).encode()

    def _request(self, body: bytes, headers: dict) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.conn.connect()
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.conn.request("POST", "/v1/infer", body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None  # an idle keep-alive closed by the server: one retry on a fresh one
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def run(self, kind: str) -> np.ndarray:
        x = self.x
        if kind == "v1_raw":
            status, data = self._request(self.raw, {"Content-Type": "application/octet-stream",
                                                    "X-Shape": ",".join(map(str, x.shape)), "X-Dtype": "float32"})
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
            return np.frombuffer(data, np.float32)
        if kind == "v1_json":
            status, data = self._request(self.v1_json, {"Content-Type": "application/json"})
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
            return np.array(json.loads(data)["outputs"]["logits"], np.float32)
        if kind.startswith("v2_http"):
            import tritonclient.http as hc

            if self._http is None:
                self._http = hc.InferenceServerClient(f"127.0.0.1:{self.port}", network_timeout=60)
            binary = kind == "v2_http_binary"
            inp = hc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = hc.InferRequestedOutput("logits", binary_data=binary)
            return self._http.infer(self.model, [inp], outputs=[out]).as_numpy("logits")
        import tritonclient.grpc as gc

        if self._grpc is None:
            self._grpc = gc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        inp = gc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return self._grpc.infer(self.model, [inp]).as_numpy("logits")

    def close(self) -> None:
        for c in (self.conn, self._http, self._grpc):
            if c is not None:
                c.close()


def soak(port: int, grpc_port: Optional[int], model: str, kinds: tuple[str, ...], requests: int, clients: int,
         x: np.ndarray, ref: np.ndarray) -> dict:
    """``requests`` requests over ``clients`` threads, kinds round-robin; latencies per kind, errors, wall time."""
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    errors: list[str] = []
    lock = threading.Lock()
    per = [requests // clients + (i < requests % clients) for i in range(clients)]

    def worker(i: int) -> None:
        c = Client(port, grpc_port, model, x)
        mine: dict[str, list[float]] = {k: [] for k in kinds}
        try:
            for j in range(per[i]):
                kind = kinds[(i + j) % len(kinds)]
                t = time.perf_counter()
                try:
                    y = c.run(kind)
                    ok = np.allclose(np.asarray(y, np.float32).ravel(), ref.ravel(), rtol=1e-4, atol=1e-4)
                    if not ok:
                        raise RuntimeError("wrong result")
                except Exception as exc:
                    with lock:
                        errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:160]}")
                    continue
                mine[kind].append(time.perf_counter() - t)
        finally:
            c.close()
        with lock:
            for k, v in mine.items():
                lat[k].extend(v)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return {"requests": requests, "wall_s": time.perf_counter() - t0, "errors": errors, "lat": lat}


def summarize(runs: list[dict]) -> dict:
    """Several soak runs (interleaved rounds) -> one summary: throughput, p50/p99 per kind, errors."""
    lat: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r["lat"].items():
            lat.setdefault(k, []).extend(v)
    errors = [e for r in runs for e in r["errors"]]
    n, wall = sum(r["requests"] for r in runs), sum(r["wall_s"] for r in runs)
    stats = {k: {"n": len(v), "p50_ms": float(np.percentile(v, 50) * 1e3) if v else None,
                 "p99_ms": float(np.percentile(v, 99) * 1e3) if v else None} for k, v in lat.items()}
    return {"requests": n, "wall_s": wall, "throughput_rps": n / wall, "errors": len(errors),
            "error_samples": errors[:5], "kinds": stats}


def batch_stats(port: int) -> tuple[float, float]:
    """(engine runs, mean images per run) from the server's sai_batch_size histogram (both servers have it)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    vals = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("sai_batch_size_"))
    runs, images = float(vals.get("sai_batch_size_count", 0)), float(vals.get("sai_batch_size_sum", 0))
    return runs, images / runs if runs else float("nan")


def _old_source(rev: str) -> Optional[Path]:
    root = Path(__file__).resolve().parent.parent
    try:
        src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:runtime/serve.py"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    from sai.outputs import write_atomic

    path = Path(tempfile.mkdtemp(prefix="sai-serve-baseline-")) / "serve_baseline.py"
    write_atomic(path, src, flag="--baseline-rev")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sai.benchmarks.serve_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="sai convert OUTDIR")
    p.add_argument("--requests", type=int, default=10000, help="requests to the new server (mixed kinds)")
    p.add_argument("--baseline-requests", type=int, help="/v1 requests to each server for the ratio (default "
                                                         "requests/2)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--shape", default="1,3,32,32", help="N,C,H,W of every request")
    p.add_argument("--baseline-rev", default="93f1d37",
                   help="git revision whose runtime/serve.py is the old server ('none': skip)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import sai.runtime as rt
    from sai.errors import SaiError
    from sai.shapes import parse_shape

    try:
        shape = parse_shape(args.shape, "--shape")
    except SaiError as exc:
        p.error(str(exc))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with rt.load(args.model, backend=args.backend, threads=args.threads) as e:
        ref = e.infer(x)["logits"]
        model = e.metadata.get("arch") or "model"
    report: dict = {"shape": list(shape), "clients": args.clients}
    n_base = args.baseline_requests or max(args.clients, args.requests // 2)

    grpc_port = free_port()
    servers = {"new": ServerProcess([sys.executable, "-m", "sai", "serve", args.model, "--backend", args.backend,
                                     "--port", "0", "--grpc-port", str(grpc_port), "--threads", str(args.threads),
                                     "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "256"], grpc_port)}
    try:
        if args.baseline_rev != "none":
            src = _old_source(args.baseline_rev)
            if src is None:
                report["old_v1"] = f"skipped: no git revision {args.baseline_rev} here"
            else:
                try:
                    servers["old"] = ServerProcess([sys.executable, "-c", _OLD_MAIN, str(src), args.model,
                                                    args.backend, str(args.threads), str(args.max_delay_ms)])
                finally:  # the server has imported it (or failed): the temporary copy can go
                    import shutil

                    shutil.rmtree(src.parent, ignore_errors=True)
        new = servers["new"]
        soak(new.port, grpc_port, model, KINDS_NEW, 20 * args.clients, args.clients, x, ref)  # warm-up
        rss = [new.rss()]  # after the warm-up, after the first half, after the second (flat: no growth per half)
        halves = []
        for n in (args.requests // 2, args.requests - args.requests // 2):
            halves.append(soak(new.port, grpc_port, model, KINDS_NEW, n, args.clients, x, ref))
            rss.append(new.rss())
        report["new_mixed"] = summarize(halves)
        report["new_mixed"]["rss_mib"] = rss
        if "old" in servers:  # the same /v1 load on both, in alternating rounds (the machine's load drifts)
            old = servers["old"]
            soak(old.port, None, model, KINDS_OLD, 20 * args.clients, args.clients, x, ref)
            rounds, runs = 4, {"new": [], "old": []}
            rss_old0 = old.rss()
            b0 = {name: batch_stats(servers[name].port) for name in ("new", "old")}
            cpu = {"new": 0.0, "old": 0.0}
            for _ in range(rounds):
                for name in ("old", "new"):
                    srv = servers[name]
                    c0 = srv.cpu()
                    runs[name].append(soak(srv.port, None, model, KINDS_OLD, max(args.clients, n_base // rounds),
                                           args.clients, x, ref))
                    cpu[name] += srv.cpu() - c0
            report["new_v1"], report["old_v1"] = summarize(runs["new"]), summarize(runs["old"])
            report["old_v1"]["rss_mib"] = [rss_old0, old.rss()]
            for name in ("new", "old"):
                (r0, m0), (r1, m1) = b0[name], batch_stats(servers[name].port)
                runs_n = r1 - r0
                report[f"{name}_v1"]["mean_batch"] = (r1 * m1 - r0 * m0) / runs_n if runs_n else float("nan")
                report[f"{name}_v1"]["server_cpu_ms_per_request"] = cpu[name] * 1e3 / report[f"{name}_v1"]["requests"]
    finally:
        for srv in servers.values():
            srv.stop()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    bad = report["new_mixed"]["errors"] + (report.get("new_v1") or {}).get("errors", 0)
    return 1 if bad else 0


def _print(r: dict) -> None:
    def line(name: str, s: dict) -> None:
        print(f"{name}: {s['requests']} requests in {s['wall_s']:.1f} s = {s['throughput_rps']:.0f} req/s, "
              f"{s['errors']} unexpected errors"
              + (f", server RSS {' -> '.join(f'{v:.0f}' for v in s['rss_mib'])} MiB" if "rss_mib" in s else "")
              + (f", {s['mean_batch']:.2f} images per engine run" if "mean_batch" in s else "")
              + (f", server CPU {s['server_cpu_ms_per_request']:.2f} ms/request" if "server_cpu_ms_per_request" in s
                 else ""))
        for k, v in s["kinds"].items():
            if v["n"]:
                print(f"  {k:15s} n={v['n']:6d}  p50 {v['p50_ms']:7.2f} ms  p99 {v['p99_ms']:7.2f} ms")
        for e in s["error_samples"]:
            print(f"  error: {e}")

    print(f"sai serve soak: {r['clients']} clients, input {r['shape']}")
    line("new server, mixed v2/v1 HTTP+gRPC", r["new_mixed"])
    if "new_v1" in r:
        line("new server, /v1 only", r["new_v1"])
    old = r.get("old_v1")
    if isinstance(old, str):
        print(f"old server: {old}")
    elif old:
        line("old server (stdlib), /v1 only", old)
        new = r["new_v1"]
        print(f"ratios new/old on /v1: throughput {new['throughput_rps'] / old['throughput_rps']:.2f}x", end="")
        for k in KINDS_OLD:
            a, b = new["kinds"][k], old["kinds"][k]
            if a["n"] and b["n"]:
                print(f", {k} p50 {a['p50_ms'] / b['p50_ms']:.2f}x p99 {a['p99_ms'] / b['p99_ms']:.2f}x", end="")
        print()


if __name__ == "__main__":
    sys.exit(main())
