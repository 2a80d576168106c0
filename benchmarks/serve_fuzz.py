"""Hostile-client generators for `sai serve`, and a soak that runs them against a server process.

``http_mutations`` / ``grpc_mutations`` derive, from one valid KServe v2 request for a ``[N,3,H,W]`` FP32
image input, requests that are invalid *by construction* (random shapes, datatypes, sizes, headers and bodies:
each mutation class only produces requests the protocol must refuse). The rule they check (the Open Inference
Protocol's): every one gets a 4xx (HTTP) or INVALID_ARGUMENT / NOT_FOUND (gRPC), never a 5xx, UNKNOWN or
INTERNAL, and the server keeps serving valid requests. ``tests/test_serve_fuzz.py`` runs a few hundred, seeded;

    python -m sai.benchmarks.serve_fuzz OUTDIR [--requests 10000]

runs 10,000 against a `sai serve` process and reports the 5xx / UNKNOWN counts, the server's RSS before and
after floods of huge request heads and of stalled bodies, and the SIGTERM drain time with stalled clients (with
short limits, and on a second server with the default ones).
A benchmark, not a test: it prints numbers (exit 1 when a request got a 5xx/UNKNOWN or the drain overran).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from sai.benchmarks.procs import free_port, reap, rss_mib

V2_TYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
            "BYTES")
JUNK = "@#`~\x01"  # a character that makes a JSON document invalid wherever it is inserted (or, inside a
#                    string, makes that string an unknown name/datatype/key: a 400 either way)


@dataclass
class HttpCase:
    what: str
    body: bytes
    headers: dict = field(default_factory=dict)


@dataclass
class GrpcCase:
    what: str
    build: Any  # (service_pb2) -> ModelInferRequest


def valid_input(rng: np.random.Generator, shape=(1, 3, 32, 32)) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def v2_doc(x: np.ndarray, binary: bool) -> dict:
    t: dict[str, Any] = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    if binary:
        t["parameters"] = {"binary_data_size": x.nbytes}
    else:
        t["data"] = x.ravel().tolist()
    return {"inputs": [t]}


def http_request(doc: dict, tail: bytes = b"", binary: bool = False) -> tuple[bytes, dict]:
    """(body, headers): JSON, or with ``binary`` the binary tensor data extension (JSON head + ``tail``)."""
    head = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    if binary or tail:
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    return head + tail, headers


# ---- invalid shapes, datatypes, sizes, parameters ---------------------------------------------------------


def _bad_shape(rng: np.random.Generator, good: list[int], max_batch: int) -> Any:
    k = int(rng.integers(9))
    if k == 0:  # a negative dim
        s = list(good)
        s[int(rng.integers(len(s)))] = -int(rng.integers(1, 10**6))
        return s
    if k == 1:  # a dim of hundreds of digits (a float overflows past 308)
        s = list(good)
        s[int(rng.integers(len(s)))] = 10 ** int(rng.integers(12, 1000))
        return s
    if k == 2:  # too many dims (numpy's limit is 32)
        return [1] * int(rng.integers(5, 70))
    if k == 3:  # wrong rank
        return list(good)[: int(rng.integers(0, len(good)))] or [3]
    if k == 4:  # not ints
        s: list[Any] = list(good)
        s[int(rng.integers(len(s)))] = [3.0, "3", True, None, [3], {"d": 3}][int(rng.integers(6))]
        return s
    if k == 5:  # not a list
        return ["1,3,32,32", 4, None, {"n": 1}, True][int(rng.integers(5))]
    if k == 6:  # batch above the server's maximum
        return [max_batch + int(rng.integers(1, 10**9))] + list(good[1:])
    if k == 7:  # channels the model does not take
        return [good[0], int(rng.choice([1, 2, 4, 64, 2**31]))] + list(good[2:])
    return [good[0], good[1], int(rng.integers(2**20, 2**40)), good[3]]  # above the profile


def _bad_datatype(rng: np.random.Generator) -> Any:
    k = int(rng.integers(4))
    if k == 0:
        return str(rng.choice([t for t in V2_TYPES if t != "FP32"]))
    if k == 1:
        return ["fp32", "float32", "FP33", "", "FP32 ", "TYPE_FP32"][int(rng.integers(6))]
    if k == 2:
        return [32, None, True, ["FP32"], {"t": "FP32"}][int(rng.integers(5))]
    return "FP32" + "\x00" * int(rng.integers(1, 4))


def _insert_junk(rng: np.random.Generator, data: bytes) -> bytes:
    i = int(rng.integers(0, len(data) + 1))
    return data[:i] + JUNK[int(rng.integers(len(JUNK)))].encode() + data[i:]


def http_mutations(rng: np.random.Generator, n: int, max_batch: int, header_limit: int = 64 << 10,
                   shape=(1, 3, 32, 32)) -> Iterator[HttpCase]:
    """``n`` invalid v2 HTTP requests (JSON and binary), each refused by construction (module docstring)."""
    for _ in range(n):
        x = valid_input(rng, shape)
        binary = bool(rng.integers(2))
        doc = v2_doc(x, binary)
        t = doc["inputs"][0]
        tail = x.tobytes() if binary else b""
        mode = "binary" if binary else "json"
        k = int(rng.integers(16))
        what = ""
        if k == 0:
            t["shape"] = _bad_shape(rng, list(shape), max_batch)
            what = f"shape {str(t['shape'])[:60]}"
        elif k == 1:
            t["datatype"] = _bad_datatype(rng)
            what = f"datatype {t['datatype']!r}"
        elif k == 2:  # data or binary size off by some
            d = int(rng.choice([-1, 1])) * int(rng.integers(1, 500))
            if binary:
                t["parameters"]["binary_data_size"] = max(0, x.nbytes + 4 * d) if d > -x.size else 1
                tail = tail + b"\0" * max(0, 4 * d)
                what = f"binary_data_size off by {4 * d}"
            else:
                t["data"] = t["data"][:d] if d < 0 else t["data"] + [0.0] * d
                what = f"data length off by {d}"
        elif k == 3:  # the binary section shorter / longer than declared
            if not binary:
                t["parameters"] = {"binary_data_size": x.nbytes}
                tail = tail[: int(rng.integers(0, x.nbytes))]
                binary = True
            else:
                tail = tail + bytes(int(rng.integers(1, 64))) if rng.integers(2) else tail[: int(rng.integers(x.nbytes))]
            what = f"binary section of {len(tail)} bytes"
        elif k == 4:  # parameters of the wrong type
            key, value = [("binary_data_output", "false"), ("binary_data_output", 0), ("binary_data_output", None),
                          ("binary_data_output", "true"), ("binary_data_output", [True])][int(rng.integers(5))]
            doc["parameters"] = {key: value}
            what = f"parameters {key}={value!r}"
        elif k == 5:  # outputs that do not exist or have bad parameters
            o = [{"name": "probs"}, {"name": "logits", "parameters": {"classification": -1}},
                 {"name": "logits", "parameters": {"classification": "3"}},
                 {"name": "logits", "parameters": {"binary_data": "yes"}}, "logits", {"name": 7}][int(rng.integers(6))]
            doc["outputs"] = [o]
            what = f"outputs {o!r}"
        elif k == 6:  # non-finite or non-numeric values
            if binary:
                arr = x.copy()
                arr.ravel()[int(rng.integers(arr.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
                tail = arr.tobytes()
            else:
                t["data"][int(rng.integers(len(t["data"])))] = ["NaN", None, "1", [1.0], {"v": 1}, "Infinity",
                                                                10**400][int(rng.integers(7))]
            what = "a bad value"
        elif k == 7:  # structure: ids, names, inputs that are not objects, duplicates
            choice = int(rng.integers(6))
            if choice == 0:
                doc["id"] = [1, 2]
            elif choice == 1:
                t["name"] = ["INPUT", 3, None, "inputs", "", "input "][int(rng.integers(6))]
            elif choice == 2:
                doc["inputs"] = [t, dict(t)]
                if binary:
                    tail = tail * 2
            elif choice == 3:
                doc["inputs"] = {"input": t}
            elif choice == 4:
                doc["inputs"] = []
            else:
                doc["inputs"] = [t, {"name": "noise", "shape": [1], "datatype": "FP32", "data": [0.0]}]
            what = f"structure {choice}"
        elif k in (8, 9):  # one junk character anywhere in the JSON
            head = _insert_junk(rng, json.dumps(doc).encode())
            headers = {"Content-Type": "application/json"}
            if binary:
                headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
            yield HttpCase(f"{mode}: junk in the JSON", head + tail, headers)
            continue
        elif k == 10:  # truncated JSON
            head = json.dumps(doc).encode()
            head = head[: int(rng.integers(0, len(head)))]
            headers = {"Content-Type": "application/json"}
            if binary:
                headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
            yield HttpCase(f"{mode}: truncated JSON", head + tail, headers)
            continue
        elif k == 11:  # Inference-Header-Content-Length that does not fit
            body, headers = http_request(doc, tail, binary)
            hl = len(json.dumps(doc).encode())
            headers["Inference-Header-Content-Length"] = str(rng.choice(
                [-1, hl - int(rng.integers(1, hl)), len(body) + int(rng.integers(1, 10**6)), "abc", "1e3", "", " ",
                 10**40]))
            yield HttpCase(f"{mode}: header length {headers['Inference-Header-Content-Length']!r}", body, headers)
            continue
        elif k == 12:  # content encodings that do not hold
            enc = str(rng.choice(["br", "gzip", "deflate", "zstd", "compress"]))
            body, headers = http_request(doc, tail, binary)
            if enc in ("gzip", "deflate") and rng.integers(2):
                c = zlib.compressobj(wbits=31 if enc == "gzip" else 15)
                body = (c.compress(body) + c.flush())[: -int(rng.integers(1, 8))]  # truncated stream
            headers["Content-Encoding"] = enc
            yield HttpCase(f"{mode}: Content-Encoding {enc}", body, headers)
            continue
        elif k == 13:  # a request head over the server's limit (431)
            body, headers = http_request(doc, tail, binary)
            size = header_limit + int(rng.integers(1024, 4 * header_limit))
            n = int(rng.integers(1, 8))
            for j in range(n):
                headers[f"X-Pad-{j}"] = "a" * (size // n)
            yield HttpCase(f"{mode}: {size} bytes of headers", body, headers)
            continue
        elif k == 14:  # random bytes as the body
            raw = rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()
            yield HttpCase("random bytes", b"\xff" + raw, {"Content-Type": str(rng.choice(
                ["application/json", "application/octet-stream", "text/plain"]))})
            continue
        else:  # a huge declared shape with a small body (the binary extension)
            t["shape"] = [int(v) for v in rng.integers(2**10, 2**31, 4)]
            t.pop("data", None)
            t["parameters"] = {"binary_data_size": 16}
            tail = bytes(16)
            binary = True
            what = f"declared shape {t['shape']}"
        body, headers = http_request(doc, tail, binary)
        yield HttpCase(f"{mode}: {what}", body, headers)


def grpc_mutations(rng: np.random.Generator, n: int, model: str, max_batch: int,
                   shape=(1, 3, 32, 32)) -> Iterator[GrpcCase]:
    """``n`` invalid ModelInfer requests (raw and typed contents), each refused by construction."""
    for _ in range(n):
        x = valid_input(rng, shape)
        k = int(rng.integers(9))
        raw = bool(rng.integers(2))
        dims: list[int] = list(shape)
        datatype = "FP32"
        data = x.tobytes()
        values: Optional[list] = None
        extra = None
        model_name, version = model, ""
        what = ""
        if k == 0:
            j = int(rng.integers(4))
            if j == 0:
                dims[int(rng.integers(4))] = -int(rng.integers(1, 2**40))
            elif j == 1:
                dims = [1] * int(rng.integers(5, 70))
            elif j == 2:
                dims = [int(v) for v in rng.integers(2**20, 2**62, 4)]
            else:
                dims = [max_batch + int(rng.integers(1, 1000))] + dims[1:]
            what = f"shape {dims[:6]}"
        elif k == 1:
            datatype = str(_bad_datatype(rng))
            what = f"datatype {datatype!r}"
        elif k == 2:
            d = int(rng.integers(1, 100))
            data = data[:-d] if rng.integers(2) else data + bytes(d)
            values = x.ravel().tolist()[: -d] if not raw else None
            what = f"contents off by {d}"
        elif k == 3:  # raw and typed contents together
            raw = True
            extra = "typed"
            what = "raw and typed contents"
        elif k == 4:  # two raw contents for one input
            raw = True
            extra = "two raw"
            what = "two raw contents"
        elif k == 5:
            model_name, version = (str(rng.choice(["resnet50", "", model + "x"])), "") if rng.integers(2) else \
                (model, str(rng.choice(["2", "0", "-1", "latest"])))
            what = f"model {model_name!r} version {version!r}"
        elif k == 6:
            extra = str(rng.choice(["output", "classification"]))
            what = f"bad {extra}"
        elif k == 7:  # non-finite values
            arr = x.copy()
            arr.ravel()[int(rng.integers(arr.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
            data, values = arr.tobytes(), arr.ravel().tolist()
            what = "non-finite value"
        else:  # typed contents in the wrong field
            raw = False
            extra = "wrong field"
            what = "typed contents in int_contents"

        def build(pb, dims=dims, datatype=datatype, data=data, values=values, raw=raw, extra=extra,
                  model_name=model_name, version=version, x=x):
            req = pb.ModelInferRequest(model_name=model_name, model_version=version)
            t = req.inputs.add(name="input", datatype=datatype, shape=dims)
            if raw:
                req.raw_input_contents.append(data)
                if extra == "typed":
                    t.contents.fp32_contents.extend(x.ravel().tolist())
                elif extra == "two raw":
                    req.raw_input_contents.append(data)
            elif extra == "wrong field":
                t.contents.int_contents.extend([1] * x.size)
            else:
                t.contents.fp32_contents.extend(values if values is not None else x.ravel().tolist())
            if extra == "output":
                req.outputs.add(name="probs")
            elif extra == "classification":
                o = req.outputs.add(name="logits")
                o.parameters["classification"].int64_param = -int(rng.integers(1, 100))
            return req

        yield GrpcCase(f"grpc {'raw' if raw else 'typed'}: {what}", build)


# ---- sending -----------------------------------------------------------------------------------------------


def send_http(host: str, port: int, path: str, case: HttpCase, timeout: float = 60) -> tuple[int, bytes]:
    """POST one case on a fresh connection; (status, body). A 431 may come back while the client still sends
    its head (the server stops reading it): the reply is read anyway."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            c.request("POST", path, body=case.body, headers=case.headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


GRPC_REFUSALS = ("INVALID_ARGUMENT", "NOT_FOUND")


def send_grpc(stub, pb, case: GrpcCase, timeout: float = 60) -> str:
    """The gRPC status code name of one case ("OK" when it was accepted)."""
    import grpc

    try:
        stub.ModelInfer(case.build(pb), timeout=timeout)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


# ---- the soak against a server process ----------------------------------------------------------------------


def header_flood(port: int, connections: int, mib: int) -> dict:
    """``connections`` clients each sending ``mib`` MiB of request headers (in parallel); what they got back."""
    replies: list[str] = []
    lock = threading.Lock()

    def one():
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        sent = 0
        reply = b""
        try:
            s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")
            line = b"X-Flood: " + b"a" * 65000 + b"\r\n"
            while sent < mib << 20:
                s.sendall(line)
                sent += len(line)
        except OSError:
            pass
        try:
            reply = s.recv(200)
        except OSError:
            pass
        s.close()
        with lock:
            replies.append(f"{reply[:12].decode(errors='replace') or 'closed'} after {sent >> 10} KiB sent")

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return {"replies": replies}


def disconnect_flood(port: int, clients: int) -> dict:
    """``clients`` uploads that send their head and 1 KiB of a 100 KB body, then close, all at once; /healthz
    polled meanwhile (its slowest answer)."""
    socks = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b" " * 1024)
        socks.append(s)
    worst = [0.0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            t = time.perf_counter()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("GET", "/healthz")
            c.getresponse().read()
            c.close()
            worst[0] = max(worst[0], time.perf_counter() - t)

    poller = threading.Thread(target=poll)
    poller.start()
    for s in socks:
        s.close()
    time.sleep(2)
    done.set()
    poller.join(60)
    return {"clients": clients, "healthz_worst_s": worst[0]}


def stalled_bodies(port: int, connections: int, declared: int, path: str = "/v1/infer") -> list[socket.socket]:
    """Open ``connections`` uploads that declare ``declared`` bytes, send half and stall."""
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {declared}\r\n\r\n".encode() + b" " * (declared // 2))
        socks.append(s)
    return socks


def drain_with_defaults(model: str, stalled: int = 50) -> dict:
    """SIGTERM to a `sai serve` with its default limits while ``stalled`` uploads hold half their body: seconds
    to exit, exit status, what the stalled clients got."""
    proc = subprocess.Popen([sys.executable, "-m", "sai", "serve", model, "--backend", "onnxruntime", "--port", "0",
                             "--grpc-port", "0", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0].rstrip(",)"))
        socks = stalled_bodies(port, stalled, 1 << 20)
        time.sleep(1)
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
        seconds = time.perf_counter() - t
        replies: dict[str, int] = {}
        for s in socks:
            s.settimeout(5)
            try:
                head = s.recv(12).decode(errors="replace") or "closed"
            except OSError as exc:
                head = type(exc).__name__
            replies[head] = replies.get(head, 0) + 1
            s.close()
        return {"stalled_clients": stalled, "sigterm_to_exit_s": seconds, "exit_status": rc, "replies": replies}
    finally:
        reap(proc)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sai.benchmarks.serve_fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="sai convert OUTDIR (an image input [N,3,H,W], FP32)")
    p.add_argument("--requests", type=int, default=10000, help="mutated requests, HTTP JSON/binary and gRPC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", default="1,3,32,32", help="N,C,H,W of the valid request the mutations start from")
    p.add_argument("--body-timeout", type=float, default=5.0, help="the server's --body-timeout")
    p.add_argument("--drain-timeout", type=float, default=10.0, help="the server's --drain-timeout")
    p.add_argument("--flood-mib", type=int, default=100, help="MiB of headers per flooding connection")
    p.add_argument("--no-default-drain", dest="default_drain", action="store_false",
                   help="skip the drain of a second server with the default --body-timeout/--drain-timeout")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from sai.shapes import parse_shape

    shape = parse_shape(args.shape, "--shape")
    gport = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sai", "serve", args.model, "--backend", "onnxruntime", "--port", "0",
                             "--grpc-port", str(gport), "--threads", "1", "--max-delay-ms", "0",
                             "--body-timeout", str(args.body_timeout), "--drain-timeout", str(args.drain_timeout),
                             "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    report: dict[str, Any] = {"requests": args.requests, "seed": args.seed}
    try:
        line = proc.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            raise SystemExit(f"server did not start: {line.strip()} {proc.stderr.read()[-500:] if proc.poll() else ''}")
        info = json.loads(proc.stdout.readline())
        port = int(line.split("127.0.0.1:")[1].split()[0].rstrip(",)"))
        model, max_batch = info["model_name"], info["max_batch"]
        path = f"/v2/models/{model}/infer"
        rng = np.random.default_rng(args.seed)
        good = HttpCase("valid", *http_request(v2_doc(valid_input(rng, shape), False)))
        status, _ = send_http("127.0.0.1", port, path, good)
        assert status == 200, status
        report["rss_start_mib"] = rss_mib(proc.pid)

        n_grpc = args.requests // 3
        counts: dict[str, int] = {}
        bad: list[str] = []
        t0 = time.perf_counter()
        for i, case in enumerate(http_mutations(rng, args.requests - n_grpc, max_batch, shape=shape)):
            status, body = send_http("127.0.0.1", port, path, case)
            counts[str(status)] = counts.get(str(status), 0) + 1
            if not 400 <= status < 500:
                bad.append(f"{case.what}: HTTP {status} {body[:120]!r}")
            if i % 100 == 0 and send_http("127.0.0.1", port, path, good)[0] != 200:
                bad.append(f"after {case.what}: a valid request failed")
        with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            for case in grpc_mutations(rng, n_grpc, model, max_batch, shape=shape):
                code = send_grpc(stub, service_pb2, case)
                counts[code] = counts.get(code, 0) + 1
                if code not in GRPC_REFUSALS:
                    bad.append(f"{case.what}: {code}")
        report["mutated_s"] = time.perf_counter() - t0
        report["outcomes"] = dict(sorted(counts.items()))
        report["unexpected"] = len(bad)
        report["unexpected_samples"] = bad[:10]
        report["server_errors"] = sum(v for k, v in counts.items() if k.startswith("5") or k in ("UNKNOWN", "INTERNAL"))
        report["rss_after_mutations_mib"] = rss_mib(proc.pid)
        report["still_serving"] = send_http("127.0.0.1", port, path, good)[0] == 200

        report["disconnects"] = disconnect_flood(port, 2000)
        flood = header_flood(port, 4, args.flood_mib)
        time.sleep(2)
        report["header_flood"] = {"connections": 4, "mib_each": args.flood_mib, **flood,
                                  "rss_after_mib": rss_mib(proc.pid)}
        socks = stalled_bodies(port, 200, 1 << 20)
        rss_stalled = rss_mib(proc.pid)
        time.sleep(args.body_timeout + 2)
        answered = 0
        for s in socks:
            s.settimeout(5)
            try:
                answered += s.recv(12).startswith(b"HTTP/1.1 408")
            except OSError:
                pass
            s.close()
        report["body_flood"] = {"connections": 200, "declared_bytes": 1 << 20, "rss_while_stalled_mib": rss_stalled,
                                "answered_408": answered, "rss_after_mib": rss_mib(proc.pid)}
        report["rss_end_mib"] = rss_mib(proc.pid)
        report["rss_growth"] = report["rss_end_mib"] / report["rss_start_mib"] - 1
        report["rss_growth_floods"] = report["rss_end_mib"] / report["rss_after_mutations_mib"] - 1

        stalled = stalled_bodies(port, 50, 1 << 20)
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
        report["drain"] = {"stalled_clients": 50, "drain_timeout_s": args.drain_timeout,
                           "sigterm_to_exit_s": time.perf_counter() - t, "exit_status": rc}
        for s in stalled:
            s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    report["server_log_lines"] = len(stderr.splitlines())
    report["server_log_tracebacks"] = stderr.count("Traceback")
    if args.default_drain:
        report["default_drain"] = drain_with_defaults(args.model)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    drains = [report["drain"], report.get("default_drain", report["drain"])]
    failed = report["unexpected"] or any(d["sigterm_to_exit_s"] > 30 or d["exit_status"] for d in drains) or \
        report["rss_growth_floods"] > 0.10
    return 1 if failed else 0


def _print(r: dict) -> None:
    print(f"sai serve fuzz: {r['requests']} mutated requests (seed {r['seed']}) in {r['mutated_s']:.1f} s")
    print(f"  outcomes: {r['outcomes']}")
    print(f"  5xx/UNKNOWN/INTERNAL: {r['server_errors']}; not a 4xx/INVALID_ARGUMENT/NOT_FOUND: {r['unexpected']}; "
          f"still serving: {r['still_serving']}")
    for s in r["unexpected_samples"]:
        print(f"    {s}")
    hf, bf, d = r["header_flood"], r["body_flood"], r["drain"]
    print(f"  RSS: start {r['rss_start_mib']:.0f} MiB, after the mutations {r['rss_after_mutations_mib']:.0f}, "
          f"after {hf['connections']} x {hf['mib_each']} MiB of headers {hf['rss_after_mib']:.0f} "
          f"({'; '.join(sorted(set(hf['replies'])))[:200]}), with {bf['connections']} stalled 1 MiB uploads "
          f"{bf['rss_while_stalled_mib']:.0f}, after they timed out {bf['rss_after_mib']:.0f} ({bf['answered_408']} "
          f"got 408); end {r['rss_end_mib']:.0f}: {100 * r['rss_growth_floods']:+.1f}% over the floods, "
          f"{100 * r['rss_growth']:+.1f}% since the start")
    print(f"  SIGTERM with {d['stalled_clients']} stalled uploads: exit {d['exit_status']} after "
          f"{d['sigterm_to_exit_s']:.1f} s (--drain-timeout {d['drain_timeout_s']:g})")
    dc = r["disconnects"]
    print(f"  {dc['clients']} clients closing mid-upload at once: /healthz answered in {dc['healthz_worst_s']:.3f} s "
          "at worst meanwhile")
    print(f"  server log: {r['server_log_lines']} lines, {r['server_log_tracebacks']} tracebacks")
    if "default_drain" in r:
        d = r["default_drain"]
        print(f"  SIGTERM to a server with the default limits (--body-timeout 30, --drain-timeout 25) and "
              f"{d['stalled_clients']} stalled uploads: exit {d['exit_status']} after {d['sigterm_to_exit_s']:.1f} s; "
              f"the stalled clients got {d['replies']}")


if __name__ == "__main__":
    sys.exit(main())
