"""`sai serve`: HTTP inference with dynamic batching (standard library server, see sai.runtime.serve)."""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    import sai.runtime as rt
    from sai.runtime.serve import InferenceServer, serve_forever, server_info

    engine = rt.load(args.model, backend=args.backend, device=args.device, threads=args.threads, seed=args.seed,
                     verify=not args.no_verify)
    with engine:
        try:
            server = InferenceServer(engine, args.host, args.port, max_batch=args.max_batch,
                                     max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                                     max_body_bytes=int(args.max_body_mb * (1 << 20)))
        except OSError as exc:
            from sai.errors import SaiError

            raise SaiError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port") from None

        def ready(s):
            info = server_info(s)
            print(f"sai serve: listening on {s.url} ({info['backend']}/{info['device']}, max batch "
                  f"{info['max_batch']}, max delay {info['max_delay_ms']:g} ms, max queue {info['max_queue']})",
                  flush=True)
            if args.json:
                print(json.dumps(info), flush=True)

        rc = serve_forever(server, on_ready=ready)
        print("sai serve: drained and stopped", file=sys.stderr, flush=True)
        return rc


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP inference server with dynamic batching and Prometheus metrics")
    p.add_argument("model", help="sai convert OUTDIR, .onnx, .plan or checkpoint")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    p.add_argument("--device", help="onnxruntime: cpu|cuda|tensorrt; torch: cpu|cuda")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    p.add_argument("--max-batch", type=int, default=8, help="images per engine run")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="wait this long for more requests to batch")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond this get 503")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="larger bodies get 413")
    p.add_argument("--threads", type=int, help="intra-op threads (onnxruntime/torch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise of stochastic models")
    p.add_argument("--json", action="store_true", help="also print the server info as one JSON line")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the OUTDIR's files against the sha256 in its manifest.json")
    p.set_defaults(func=run)
