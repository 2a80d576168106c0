"""The gRPC front end of `sai serve`: KServe v2's ``inference.GRPCInferenceService`` on grpcio.

The message classes and the service stubs are the ones ``tritonclient[grpc]`` generates from the protocol's
public ``grpc_service.proto`` (``pip install sai-deploy[grpc]``); the servicer calls the ``DataPlane``
(``sai.runtime.serve_dataplane``: checks, batcher, metrics) as the HTTP front end does, and never imports it.
Request faults map to gRPC codes: 400 -> INVALID_ARGUMENT,
404 -> NOT_FOUND, 413 -> INVALID_ARGUMENT (the message names the limit), 503 -> UNAVAILABLE,
504 -> DEADLINE_EXCEEDED, 500 -> INTERNAL.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sai.lazy import lazy_import
from sai.runtime import kserve
from sai.runtime.kserve import HTTPError
from sai.runtime.serve_dataplane import DataPlane, internal_error

CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents"}


_PURPOSE = "serve the KServe v2 gRPC endpoint (or pass --grpc-port 0 to serve HTTP only)"
_INSTALL = "pip install 'sai-deploy[grpc]' (grpcio and tritonclient's v2 protocol stubs)"
_GRPC = lazy_import("grpc", purpose=_PURPOSE, dist="grpcio", install=_INSTALL)
_STUBS = [lazy_import(f"tritonclient.grpc.{name}", purpose=_PURPOSE, install=_INSTALL)
          for name in ("service_pb2", "service_pb2_grpc", "model_config_pb2")]


def _modules():
    return (_GRPC.load(), *(m.load() for m in _STUBS))


def _code(grpc, status: int):
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND, 411: grpc.StatusCode.INVALID_ARGUMENT,
            413: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
            503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}.get(status, grpc.StatusCode.INTERNAL)


def decode_infer_request(request, engine) -> kserve.InferRequest:
    """A ``ModelInferRequest`` -> the checked feeds (raw_input_contents or typed contents)."""
    if not request.inputs:
        raise HTTPError(400, "the request has no inputs")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise HTTPError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per input")
    feeds = {}
    for i, t in enumerate(request.inputs):
        if t.name in feeds:
            raise HTTPError(400, f"input {t.name!r} is given twice")
        shape = kserve.declared_shape(t.name, [int(d) for d in t.shape])
        dtype = kserve.check_declared(engine, t.name, t.datatype, shape)
        if raw and t.contents.ListFields():
            raise HTTPError(400, f"input {t.name!r} has typed contents and the request has raw_input_contents; "
                                 "send one or the other")
        if raw:
            feeds[t.name] = kserve.tensor_from_bytes(t.name, dtype, shape, raw[i])
        else:
            fieldname = CONTENTS_FIELD.get(t.datatype)
            values = getattr(t.contents, fieldname) if fieldname else []
            if fieldname is None:
                raise HTTPError(400, f"input {t.name!r}: {t.datatype} data must come as raw_input_contents")
            feeds[t.name] = kserve.tensor_from_list(t.name, dtype, shape, list(values))
    noise = dict(engine.noise_inputs)
    missing = [s.name for s in engine.inputs if s.name not in feeds and s.name not in noise]
    if missing:
        raise HTTPError(400, f"missing input(s) {', '.join(missing)}")
    known = [s.name for s in engine.outputs]
    requested = None
    if request.outputs:
        requested = []
        for o in request.outputs:
            if o.name not in known:
                raise HTTPError(400, f"unknown output {o.name[:60]!r}; the model has {', '.join(known)}")
            k = o.parameters["classification"].int64_param if "classification" in o.parameters else 0
            if k < 0:
                raise HTTPError(400, f"output {o.name!r}: classification must be a non-negative integer (top-k)")
            requested.append((o.name, True, int(k)))
    return kserve.InferRequest(request.id or None, feeds, requested, True)


def make_grpc_server(plane: DataPlane, host: str, port: int):
    """``(grpc.Server not yet started, bound port)`` serving ``plane``'s model."""
    grpc, pb, pb_grpc, mc = _modules()

    def fail(context, exc: HTTPError):
        context.abort(_code(grpc, exc.status), str(exc))

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):
            plane.metrics.request("grpc/ServerLive", 200)
            return pb.ServerLiveResponse(live=True)

        def ServerReady(self, request, context):
            plane.metrics.request("grpc/ServerReady", 200)
            return pb.ServerReadyResponse(ready=plane.is_ready())

        def ServerMetadata(self, request, context):
            return pb.ServerMetadataResponse(**plane.server_metadata())

        def _check(self, request, context):
            try:
                plane.check_model(request.name, request.version)
            except HTTPError as exc:
                fail(context, exc)

        def ModelReady(self, request, context):
            self._check(request, context)
            return pb.ModelReadyResponse(ready=plane.is_ready())

        def ModelMetadata(self, request, context):
            self._check(request, context)
            meta = plane.metadata()
            tm = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
                outputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

        def ModelConfig(self, request, context):
            self._check(request, context)
            cfg = plane.config()

            def tensor(t, cls):
                kw = {"optional": True} if t.get("optional") and cls is mc.ModelInput else {}
                return cls(name=t["name"], data_type=mc.DataType.Value(t["data_type"]), dims=t["dims"], **kw)

            config = mc.ModelConfig(name=cfg["name"], platform=cfg["platform"], backend=cfg["backend"],
                                    max_batch_size=cfg["max_batch_size"],
                                    input=[tensor(t, mc.ModelInput) for t in cfg["input"]],
                                    output=[tensor(t, mc.ModelOutput) for t in cfg["output"]],
                                    dynamic_batching=mc.ModelDynamicBatching(),
                                    parameters={k: mc.ModelParameter(string_value=v["string_value"])
                                                for k, v in cfg["parameters"].items()})
            return pb.ModelConfigResponse(config=config)

        def ModelStatistics(self, request, context):
            if request.name or request.version:  # no name: every model's (this server has one)
                self._check(request, context)
            st = plane.statistics()
            dur = pb.StatisticDuration

            def durations(d: dict) -> dict:
                return {k: dur(**v) for k, v in d.items() if k != "batch_size"}

            plane.metrics.request("grpc/ModelStatistics", 200)
            return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(
                name=st["name"], version=st["version"], last_inference=st["last_inference"],
                inference_count=st["inference_count"], execution_count=st["execution_count"],
                inference_stats=pb.InferStatistics(**durations(st["inference_stats"])),
                batch_stats=[pb.InferBatchStatistics(batch_size=b["batch_size"], **durations(b))
                             for b in st["batch_stats"]])])

        def ModelInfer(self, request, context):
            resp, error = self._answer(request, "grpc/ModelInfer")
            if error is not None:
                fail(context, error)
            return resp

        def ModelStreamInfer(self, request_iterator, context):
            """Each request of the stream is answered on the stream, in the order sent: its ``infer_response``, or
            its error as ``error_message`` (the stream goes on). A reader thread takes requests as they come and
            runs them on the stream pool, so a stream's requests in flight are batched together as separate
            clients' are."""
            answers: queue.Queue = queue.Queue()

            def read():
                try:
                    for request in request_iterator:
                        answers.put(stream_pool.submit(self._answer, request, "grpc/ModelStreamInfer"))
                except Exception:  # the client cancelled or went away: no more requests
                    pass
                finally:
                    answers.put(None)

            threading.Thread(target=read, name="sai-grpc-stream", daemon=True).start()
            for fut in iter(answers.get, None):
                resp, error = fut.result()
                if error is not None:
                    yield pb.ModelStreamInferResponse(error_message=str(error))
                else:
                    yield pb.ModelStreamInferResponse(infer_response=resp)

        def _answer(self, request, where: str):
            """``(ModelInferResponse, None)`` or ``(None, HTTPError)`` for one inference request, counted in the
            metrics under ``where`` (an unknown model or version is answered but not counted as an inference)."""
            t0 = time.perf_counter()
            try:
                plane.check_model(request.model_name, request.model_version)
            except HTTPError as exc:
                plane.metrics.request(where, exc.status)
                return None, exc
            status, resp, error = 200, None, None
            try:
                with plane.inflight():
                    resp = self._infer(request)
            except HTTPError as exc:
                status, error = exc.status, exc
            except Exception as exc:  # a bug: INTERNAL naming it (not UNKNOWN), counted as a failure, one log line
                error = internal_error(exc, where)
                status = error.status
            plane.metrics.inference_request(where, status, time.perf_counter() - t0)
            return resp, error

        def _infer(self, request):
            """Decode, check, queue and await one ModelInfer request (HTTPError for what goes wrong)."""
            with plane.admitted():
                if plane.detector is not None:  # images in, detections out (sai.runtime.serve_detector)
                    req, fut = plane.infer_detector_grpc(request)
                else:
                    req = decode_infer_request(request, plane.engine)
                    req.feeds = plane.check(req.feeds)
                    fut = plane.submit(req.feeds)
            outs = plane.outputs(req, plane.result(fut))
            resp = pb.ModelInferResponse(model_name=plane.model_name, model_version=plane.model_version,
                                         id=request.id)
            for name, arr, _ in kserve.selected_outputs(outs, req, plane.labels):
                resp.outputs.add(name=name, datatype=kserve.v2_datatype(arr.dtype), shape=list(arr.shape))
                resp.raw_output_contents.append(kserve.bytes_tensor(arr) if arr.dtype == np.dtype(object)
                                                else np.ascontiguousarray(arr).tobytes())
            return resp

    limit = max(plane.max_body_bytes, 4 << 20)
    workers = max(8, min(64, plane.batcher.max_queue + plane.max_batch))
    stream_pool = ThreadPoolExecutor(workers, thread_name_prefix="sai-grpc-stream")  # streams' requests
    grpc_server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="sai-grpc"),
                              maximum_concurrent_rpcs=4 * workers,
                              options=[("grpc.max_receive_message_length", limit),
                                       ("grpc.max_send_message_length", 1 << 30), ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), grpc_server)
    try:
        bound = grpc_server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC on {host}:{port}: {exc}") from None
    if not bound:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    return grpc_server, bound
