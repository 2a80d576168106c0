"""`sai serve`: KServe v2 (HTTP + gRPC) and /v1 inference with dynamic batching (see sai.runtime.serve)."""

from __future__ import annotations

import argparse
import json
import sys

from sai.cli.options import add_backend_args, add_json, add_no_verify


def run(args: argparse.Namespace) -> int:
    import sai.runtime as rt
    from sai.errors import SaiError
    from sai.runtime.serve import InferenceServer, serve_forever, server_info

    max_shape = None
    if args.max_shape:
        from sai.exporter.export import parse_input_shape

        max_shape = parse_input_shape(args.max_shape, "--max-shape")
    grpc_port = args.grpc_port if args.grpc_port > 0 else None
    engine = rt.load(args.model, backend=args.backend, device=args.device, threads=args.threads, seed=args.seed,
                     verify=not args.no_verify)
    if args.mask_metrics and getattr(engine, "kind", None) == "detector":
        engine.close()
        raise SaiError("--mask-metrics is not available for a detector yet; serve it without the option")
    if args.mask_metrics:
        from sai.runtime.serve_masks import with_mask_outputs

        engine = with_mask_outputs(engine, device=args.device, threads=args.threads, seed=args.seed)
    with engine:
        try:
            server = InferenceServer(engine, args.host, args.port, max_batch=args.max_batch,
                                     max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                                     max_body_bytes=int(args.max_body_mb * (1 << 20)) if args.max_body_mb else None,
                                     grpc_port=grpc_port, model_name=args.model_name, idle_timeout=args.idle_timeout,
                                     max_shape=max_shape, max_header_bytes=int(args.max_header_kb * 1024),
                                     body_timeout=args.body_timeout, drain_timeout=args.drain_timeout)
        except OSError as exc:
            raise SaiError(f"cannot listen on {args.host} (HTTP port {args.port}, gRPC port {args.grpc_port}): "
                           f"{exc.strerror or exc}; pick another --port / --grpc-port (0 turns gRPC off)") from None

        def ready(s):
            info = server_info(s)
            grpc = f", gRPC on {s.host}:{s.grpc_port}" if s.grpc_port else ""
            print(f"sai serve: listening on {s.url}{grpc} (model {info['model_name']!r}, {info['backend']}/"
                  f"{info['device']}, max batch {info['max_batch']}, max delay {info['max_delay_ms']:g} ms, max queue "
                  f"{info['max_queue']})", flush=True)
            if args.json:
                print(json.dumps(info), flush=True)

        rc = serve_forever(server, on_ready=ready)
        print("sai serve: drained and stopped", file=sys.stderr, flush=True)
        return rc


def port_number(text: str) -> int:
    """``--port``/``--grpc-port``: 0 to 65535 (a usage error otherwise; the OS would wrap 99999 to 34463)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a TCP port: use 1 to 65535, or 0")
    return port


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a positive number")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="KServe v2 (HTTP + gRPC) inference server with dynamic batching and metrics")
    p.add_argument("model", help="sai convert OUTDIR, .onnx, .plan or checkpoint")
    add_backend_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface, e.g. in a container)")
    p.add_argument("--port", type=port_number, default=8000, help="HTTP port (1-65535); 0 picks a free port (printed "
                   "on start)")
    p.add_argument("--grpc-port", type=port_number, default=8001,
                   help="gRPC port (KServe v2 GRPCInferenceService, 1-65535); 0: no gRPC")
    p.add_argument("--model-name", help="the v2 model name (default: the manifest's arch, e.g. sparse_resnet18)")
    p.add_argument("--max-batch", type=int, default=8, help="images per engine run")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="wait this long for more requests to batch")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond this get 503")
    p.add_argument("--max-shape", metavar="SHAPE", help="NxCxHxW largest image accepted (default: the manifest's "
                   "profile; a detector: N images per request, each at most HxW, default 4096x4096); outside the "
                   "accepted ranges: 400 naming them")
    p.add_argument("--max-body-mb", type=float,
                   help="larger bodies get 413 (default: what the largest request the profile admits needs, <= 64)")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="close a connection that sends no complete request head for this many seconds")
    p.add_argument("--max-header-kb", type=positive_number, default=64,
                   help="a request head (request line + headers) larger than this gets 431 and the connection closes")
    p.add_argument("--body-timeout", type=positive_number, default=30.0,
                   help="a request body must arrive within this many seconds (408 and the connection closes)")
    p.add_argument("--drain-timeout", type=positive_number, default=25.0,
                   help="on SIGTERM/SIGINT, finish open requests within this many seconds, then exit 0 (keep it below "
                        "the pod's terminationGracePeriodSeconds, 30 by default)")
    p.add_argument("--mask-metrics", action="store_true",
                   help="export every block's mask density in /metrics (sai_mask_density; onnxruntime/torch)")
    add_json(p, what="the server info (one line, once listening) after the line above")
    add_no_verify(p)
    p.set_defaults(func=run)
