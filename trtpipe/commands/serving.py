"""CLI, scale-out: `triton` writes a Triton model repository from bundles; `triton-serve` runs it on loopback with
the tritonserver of the nvidia-pytriton wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import err, info, out, warn
from ._common import JsonOpt, QuietOpt, command, print_json


@command("triton")
def triton_cmd(
    bundles: Annotated[
        list[str],
        typer.Argument(help="bundle directories (NAME=BUNDLE to choose the model name)", show_default=False),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="model repository directory to write")],
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="Triton backend: python (text in, answers out; every task, generation too), onnxruntime or "
            "tensorrt (the graph itself; encoders)",
        ),
    ] = "python",
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch", help="max_batch_size: most rows Triton batches (GPT-2: requests decoding at once)"
        ),
    ] = 8,
    instances: Annotated[int, typer.Option("--instances", help="model instances (copies) per model")] = 1,
    dynamic_batching: Annotated[
        bool,
        typer.Option("--dynamic-batching/--no-dynamic-batching", help="let Triton merge concurrent requests"),
    ] = True,
    queue_delay_us: Annotated[
        int,
        typer.Option("--max-queue-delay-us", help="how long the batcher may hold a request to fill a batch"),
    ] = 100,
    device: Annotated[
        str, typer.Option("--device", help="instance kind: auto, cpu (KIND_CPU) or gpu (KIND_GPU)")
    ] = "auto",
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="--backend python: trtpipe session inside Triton (ort-cpu, ort-cuda, ort-trt, trt, ov)",
        ),
    ] = "ort-cpu",
    variant: Annotated[
        str | None, typer.Option("--variant", help="ONNX variant or engine precision (default fp32)")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="--backend tensorrt: engine file in the bundle, when it has several"),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream", help="GPT-2: stream tokens (decoupled model; gRPC streaming / generate_stream)"
        ),
    ] = False,
    python_path: Annotated[
        str | None,
        typer.Option(
            "--python-path",
            help="--backend python: comma-separated directories the model adds to sys.path before importing "
            "trtpipe (e.g. a trtpipe checkout inside the Triton container)",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="--backend python: intra-op threads per instance (default: half the server's CPUs, shared "
            "among the instances)",
        ),
    ] = None,
    max_queue: Annotated[
        int,
        typer.Option("--max-queue", help="GPT-2: requests that may wait for a free slot; more are refused"),
    ] = 64,
    prefill_chunk: Annotated[
        int,
        typer.Option(
            "--prefill-chunk", help="GPT-2: prompt tokens prefilled per decode step (others keep going)"
        ),
    ] = 64,
    prefill_backend: Annotated[
        str | None,
        typer.Option(
            "--prefill-backend",
            help="GPT-2 on --runtime ort-cpu: ov runs the prompts on OpenVINO (needs openvino in the server)",
        ),
    ] = None,
    kv_cache: Annotated[
        str,
        typer.Option(
            "--kv-cache",
            help="GPT-2: fp32 | int8 (ort-cpu: the bundle's kv8 twins; ov --paged: OpenVINO's u8 cache, gated by "
            "`optimize --precision kv8`)",
        ),
    ] = "fp32",
    paged: Annotated[
        bool,
        typer.Option(
            "--paged",
            help="GPT-2 on --runtime ov: OpenVINO's PagedAttention engine (faster with many streams)",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing repository")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Write a Triton model repository from bundles (config.pbtxt checked against Triton's schema)."""
    from ..serving.repository import MANIFEST, RepoOptions, write_repository

    options = RepoOptions(
        backend=backend,
        max_batch=max_batch,
        instances=instances,
        dynamic_batching=dynamic_batching,
        queue_delay_us=queue_delay_us,
        device=device,
        runtime=runtime,
        variant=variant,
        engine=engine,
        stream=stream,
        python_path=tuple(p.strip() for p in (python_path or "").split(",") if p.strip()),
        threads=threads,
        max_queue=max_queue,
        prefill_chunk=prefill_chunk,
        prefill_backend=prefill_backend,
        kv_cache=kv_cache,
        paged=paged,
    )
    planned = write_repository(bundles, out_dir, options, overwrite=overwrite)
    if as_json:
        print_json(
            {
                "repository": str(out_dir),
                "models": {m.name: {"backend": m.backend, **m.summary} for m in planned},
            }
        )
        return
    for model in planned:
        details = ", ".join(f"{k} {v}" for k, v in model.summary.items() if not isinstance(v, list))
        out.print(f"{model.name}: {model.backend} backend — {details}")
    if any(m.bundle.random_weights for m in planned):
        warn("some bundles have random weights: their answers are meaningless (speed and parity only)")
    info(
        f"wrote {out_dir} ({len(planned)} model{'s' if len(planned) != 1 else ''}; see {out_dir / MANIFEST})"
    )
    if backend == "python":
        info(f"  next: trtpipe triton-serve {out_dir}   (loopback; or the Triton container, docs/serving.md)")
    else:
        info(
            f"  next: the Triton container with {out_dir} mounted (docs/serving.md); the wheel's "
            "tritonserver has the python backend only"
        )


@command("triton-serve")
def triton_serve_cmd(
    repositories: Annotated[
        list[Path],
        typer.Argument(help="model repositories (written by `trtpipe triton`)", show_default=False),
    ],
    http_port: Annotated[
        int, typer.Option("--http-port", help="HTTP port on 127.0.0.1 (0: any free)")
    ] = 8000,
    grpc_port: Annotated[
        int, typer.Option("--grpc-port", help="gRPC port on 127.0.0.1 (0: any free)")
    ] = 8001,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Prometheus metrics on 127.0.0.1 (default: off)")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for the models to load")
    ] = 300.0,
    duration: Annotated[
        float, typer.Option("--duration", help="stop after this many seconds (0: run until Ctrl-C)")
    ] = 0.0,
    drain_timeout: Annotated[
        int,
        typer.Option(
            "--drain-timeout",
            min=0,
            max=3600,
            help="on SIGTERM or Ctrl-C: seconds the requests in flight get to finish (new ones are refused) before "
            "the server exits; a second signal stops it at once",
        ),
    ] = 30,
    verbose: Annotated[bool, typer.Option("--verbose", help="Triton's verbose log")] = False,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            help="N tritonservers behind HAProxy on --http-port (HTTP only; haproxy: apt-get install haproxy)",
        ),
    ] = 1,
    quiet: QuietOpt = False,
):
    """Run Triton Inference Server (from the nvidia-pytriton wheel) on 127.0.0.1 for a model repository.
    SIGTERM or Ctrl-C drains it (exit 0 once it and its stubs are gone); a second signal kills it (exit 128+N)."""
    if replicas != 1:
        return _serve_replicas(
            list(repositories), replicas, http_port, metrics_port, timeout, duration, drain_timeout
        )
    _serve_one(
        list(repositories), http_port, grpc_port, metrics_port, timeout, duration, drain_timeout, verbose
    )


def _serve_one(repositories, http_port, grpc_port, metrics_port, timeout, duration, drain_timeout, verbose):
    """One tritonserver, stopped like a service: the first SIGTERM / SIGINT drains it, a second one kills it."""
    import signal
    import time

    from ..runtime.errors import UserError
    from ..serving.drain import StopSignals
    from ..serving.server import start_server

    def notify(signum: int, first: bool) -> None:
        name = signal.Signals(signum).name
        if first:
            info(
                f"{name}: draining (new requests refused, those in flight get up to {drain_timeout}s); "
                "a second signal stops it at once"
            )
        else:
            warn(f"{name} again: killing tritonserver and its stubs now")

    info(f"starting tritonserver for {', '.join(map(str, repositories))} (loopback only)…")
    with StopSignals(notify) as signals:
        try:
            server = start_server(
                repositories,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                timeout_s=timeout,
                verbose=verbose,
                drain_timeout_s=drain_timeout,
                on_launch=signals.attach,
            )
        except UserError:
            if not signals.received:
                raise
            info("tritonserver stopped before it was ready")
            raise typer.Exit(128 + signals.received[-1] if signals.killed else 0) from None
        try:
            out.print(
                f"ready: HTTP http://{server.http_url}  gRPC {server.grpc_url}"
                + (f"  metrics http://127.0.0.1:{metrics_port}/metrics" if metrics_port else "")
            )
            models = sorted(
                p.name for r in repositories for p in r.iterdir() if (p / "config.pbtxt").is_file()
            )
            out.print(f"models: {', '.join(models)}")
            info(
                f"  try: curl -s http://{server.http_url}/v2/models/{models[0] if models else 'NAME'}/config"
            )
            info("Ctrl-C or SIGTERM stops the server" + (f"; stopping in {duration:g}s" if duration else ""))
            server.serve(duration or None)
        finally:
            began = signals.first_at or time.monotonic()
            code = server.stop()
            took = time.monotonic() - began
    if signals.killed:
        warn(f"tritonserver killed (exit {code})")
        raise typer.Exit(128 + signals.received[-1])
    if server.overstayed:  # not the user's fault: exit 1, not a UserError's 2
        err.print(
            f"[bold red]error:[/] tritonserver outstayed its {drain_timeout}s drain; killed it and its stubs"
        )
        raise typer.Exit(1)
    info(f"tritonserver stopped (exit {code}) in {took:.1f}s; nothing of it is left running")


def _serve_replicas(
    repositories, replicas, http_port, metrics_port, timeout, duration, drain_timeout
) -> None:
    """triton-serve --replicas N: N tritonservers on free loopback ports behind HAProxy on --http-port."""
    import signal

    from ..runtime.errors import UserError
    from ..serving.replicas import start_replicas

    if metrics_port is not None:
        raise UserError("--metrics-port serves one tritonserver; drop it with --replicas")
    if replicas < 1:
        raise UserError(f"replicas must be at least 1, not {replicas}", fields="replicas")
    info(
        f"starting {replicas} tritonservers for {', '.join(map(str, repositories))} behind HAProxy (loopback)…"
    )
    replica_set = start_replicas(
        repositories, replicas=replicas, port=http_port, timeout_s=timeout, drain_timeout_s=drain_timeout
    )

    def interrupted(*_):  # SIGTERM stops it like Ctrl-C: the replicas run in their own sessions
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        backends = ", ".join(f"{s.http_url}" for s in replica_set.servers if s is not None)
        out.print(f"ready: HTTP http://{replica_set.http_url}  (HAProxy → {replicas} replicas: {backends})")
        models = sorted(p.name for r in repositories for p in r.iterdir() if (p / "config.pbtxt").is_file())
        out.print(f"models: {', '.join(models)}")
        grpc = ", ".join(s.grpc_url for s in replica_set.servers if s is not None)
        info(f"  gRPC is per replica, not balanced: {grpc}")
        info(
            f"  which replicas are UP: `show stat` on HAProxy's runtime API, {replica_set.workdir / 'admin.sock'}"
        )
        info("Ctrl-C stops HAProxy and the replicas" + (f"; stopping in {duration:g}s" if duration else ""))
        replica_set.serve(duration or None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        replica_set.stop()
        info("HAProxy and the replicas stopped")
