"""`trtpipe benchmark --engine BUNDLE`: plan the rows (backends × variants × shapes, plus peers), measure them side by
side, add peak memory per row (fresh subprocess each) and the environment, write the reports."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path

from ..console import info, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.session import BACKENDS
from .env import environment

ALL_BACKENDS = (*BACKENDS, "torch")


def backend_available(backend: str, bundle: Bundle) -> str | None:
    """None when usable here, else the reason (reported as a skipped row)."""
    if backend == "torch":
        return (
            None
            if importlib.util.find_spec("torch")
            else "torch is not installed (pip install trtpipe[export])"
        )
    if importlib.util.find_spec("onnxruntime") is None and backend.startswith("ort"):
        return "onnxruntime is not installed (pip install trtpipe[cpu] or [gpu])"
    if backend == "ov" and importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install trtpipe[ov])"
    if backend in ("ort-cuda", "ort-trt"):
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if backend == "ort-cuda" else "TensorrtExecutionProvider"
        if provider not in ort.get_available_providers():
            return (
                f"{provider} is not available (needs onnxruntime-gpu and an NVIDIA GPU; see `trtpipe doctor`)"
            )
    if backend == "trt":
        from .env import gpus

        if not gpus():
            return "no NVIDIA GPU here (TensorRT engines run on a GPU; see `trtpipe doctor`)"
        if not bundle.engines:
            return f"no engine in the bundle (build one with `trtpipe build {bundle.path}`)"
    return None


def kv8_rows(bundle: Bundle, names: list[str]) -> list[str]:
    """The variants among `names` that have a current int8-cache twin (`optimize --precision kv8`); none: a UserError
    naming the command."""
    twins = {"fp32": "kv8-inplace"} | {n: f"{n}.kv8-inplace" for n in names if n != "fp32"}
    found = [n for n in names if twins[n] in bundle.variants and not bundle.stale(twins[n])]
    if not found:
        raise UserError(
            f"--kv-cache int8: none of {', '.join(names)} has a current int8-cache twin in {bundle.path}; create them "
            f"with `trtpipe optimize {bundle.path} --precision kv8`"
        )
    return found


def _variants_for(bundle: Bundle, backend: str, variants: list[str]) -> list[str]:
    if variants == ["all"]:
        if backend == "trt":
            return sorted({e.get("variant", "fp32") for e in bundle.engines.values()})
        names = [n for n in bundle.variants if n != "all-logits" and not bundle.variants[n].get("kv")]
        if backend not in ("ort-cpu", "ov"):  # OpenVINO reads ORT's CPU-only ops too (runtime/ov.py)
            names = [n for n in names if not bundle.variants[n].get("ort_only")]
        # a variant that is one backend's compute of another's file (bf16: OpenVINO's) runs there only
        return [n for n in names if bundle.runs_on(n, backend)]
    for name in variants:
        if backend != "trt" and name not in bundle.variants:
            raise UserError(
                f"bundle {bundle.path} has no variant {name!r} (has: {', '.join(sorted(bundle.variants))}); "
                f"create it with `trtpipe optimize {bundle.path} --precision {name}`"
            )
    return variants


def plan_backends(bundle: Bundle, backends: list[str]) -> tuple[list[str], list[str]]:
    for name in backends:
        if name not in (*ALL_BACKENDS, "all"):
            raise UserError(f"unknown backend {name!r}; choose from: {', '.join(ALL_BACKENDS)}, all")
    wanted = list(ALL_BACKENDS) if backends == ["all"] else backends
    usable, skipped = [], []
    for backend in wanted:
        reason = backend_available(backend, bundle)
        if reason:
            skipped.append(f"{backend}: {reason}")
            if backends != ["all"] and backend != "torch":
                warn(f"backend {backend} skipped: {reason}")
        else:
            usable.append(backend)
    return usable, skipped


def benchmark(
    bundle_path: str | Path,
    backends: list[str],
    variants: list[str],
    batches: list[int] | None,
    seq: int | None,
    prompt_lens: list[int] | None,
    new_tokens: int | None,
    threads: int | None,
    warmup: int | None,
    iters: int | None,
    seconds: float | None,
    baselines: list[str],
    out_dir: Path,
    rounds: int = 5,
    memory: bool = True,
    prefill_backend: str | None = None,
    kv_cache: str | None = None,
) -> dict:
    bundle = Bundle.load(bundle_path)
    if prefill_backend is not None and not bundle.is_decoder:
        raise UserError(
            "--prefill-backend applies to GPT-2 bundles (the prompt's prefill); leave it out here"
        )
    if kv_cache not in (None, "fp32", "int8"):
        raise UserError(f"--kv-cache must be int8 (rows beside the fp32 cache's) (got {kv_cache!r})")
    kv_cache = None if kv_cache == "fp32" else kv_cache
    if kv_cache is not None and not bundle.is_decoder:
        raise UserError("--kv-cache applies to GPT-2 bundles (the decoder's KV cache); leave it out here")
    if bundle.is_decoder and (iters is not None or seconds is not None):
        warn(
            "--iters / --seconds time encoder rows; a GPT-2 round is one generation (use --rounds, --new-tokens)"
        )
    iters = 4 if iters is None else iters
    warmup = (1 if bundle.is_decoder else 2) if warmup is None else warmup
    if iters < 1 or warmup < 0 or rounds < 1:
        raise UserError("--iters and --rounds must be ≥ 1 and --warmup ≥ 0")
    if seconds is not None and seconds <= 0:
        raise UserError(f"--seconds must be > 0 (got {seconds})")
    if (
        any(b < 1 for b in batches or [])
        or (seq is not None and seq < 1)
        or any(p < 1 for p in prompt_lens or [])
    ):
        raise UserError("--batch, --seq and --prompt-len values must be ≥ 1")
    from .report import check_out_dir

    check_out_dir(out_dir)
    usable, skipped = plan_backends(bundle, backends)
    if kv_cache is not None and "ort-cpu" not in usable:
        raise UserError(
            "--kv-cache int8 adds rows beside ort-cpu's (the in-place cache): include --backend ort-cpu"
        )
    if kv_cache is not None:
        kv8_rows(
            bundle, _variants_for(bundle, "ort-cpu", variants)
        )  # refused here, before any shape is planned
    if prefill_backend is not None and "ort-cpu" not in usable:
        raise UserError(
            "--prefill-backend adds rows beside ort-cpu's (it feeds ONNX Runtime's in-place cache): "
            "include --backend ort-cpu"
        )
    shapes = _shapes(bundle, usable, batches, seq, prompt_lens, new_tokens)
    batches, seq, prompt_lens, new_tokens = shapes.batches, shapes.seq, shapes.prompt_lens, shapes.new_tokens
    for note in shapes.notes:
        info(f"note: {note}")
    report = {
        "bundle": str(bundle.path),
        "task": bundle.task,
        "family": bundle.family,
        "random_weights": bundle.random_weights,
        "env": environment(threads),
        "config": {
            "backends": backends,
            "variants": variants,
            "batches": batches,
            "seq": seq,
            "prompt_lens": prompt_lens,
            "new_tokens": new_tokens,
            "threads": threads,
            "warmup": warmup,
            "iters": None if bundle.is_decoder else iters,  # a decoder round is one whole generation
            "seconds": None if bundle.is_decoder else seconds,
            "rounds": rounds,
            "baselines": baselines,
            "prefill_backend": prefill_backend,
            "kv_cache": kv_cache,
        },
        "skipped": skipped,
        "notes": shapes.notes,
        "encoder": [],
        "decoder": [],
        "floors": [],
    }
    try:
        if bundle.is_decoder:
            _decoder(bundle, usable, report, memory)
        else:
            _encoder(bundle, usable, report, memory)
    except KeyboardInterrupt:
        warn("interrupted: writing what was measured")
        report["interrupted"] = True
    from .report import print_table, write_report

    paths = write_report(report, Path(out_dir), stem=f"benchmark-{bundle.name}")
    print_table(report)
    info("reports: " + ", ".join(str(p) for p in paths))
    return report


def _shapes(bundle, usable, batches, seq, prompt_lens, new_tokens):
    """The shapes to measure: those asked, or the defaults that fit the bundle (and a TensorRT engine's profiles)."""
    from .shapes import decoder_shapes, encoder_shapes, engine_limits

    if bundle.is_decoder:
        return decoder_shapes(bundle, prompt_lens, new_tokens)
    max_batch, max_seq = engine_limits(bundle) if "trt" in usable else (None, None)
    return encoder_shapes(bundle, batches, seq, max_batch=max_batch, max_seq=max_seq)


def _encoder(bundle, usable, report, memory):
    """Encoder rows: ours per backend and variant, the baselines, at every batch × seq; the plan is the report's config
    (its shapes resolved)."""
    from .encode import run_encode
    from .memory import NOT_ASKED, measure_or_reason

    config = report["config"]
    variants, batches, seq, threads = config["variants"], config["batches"], config["seq"], config["threads"]
    baselines = config["baselines"]

    specs = []
    for backend in usable:
        if backend == "torch":
            continue
        for variant in _variants_for(bundle, backend, variants):
            specs.append(("ours", None if variant == "fp32" else variant, backend))
    if "torch" in usable or "torch" in baselines:
        specs.append(("torch", None, "torch"))
    if "optimum" in baselines:
        specs.append(("optimum", None, "optimum"))
    for name in baselines:
        if name not in ("torch", "optimum"):
            raise UserError(f"unknown baseline {name!r}; encoders compare against torch and optimum")
    shapes = [(b, seq) for b in batches]
    timing = {k: config[k] for k in ("rounds", "iters", "warmup", "seconds")}
    results = run_encode(bundle, specs, shapes, threads, **timing)
    for result in results:
        if not memory:
            result.peak_rss_note = NOT_ASKED
        elif result.error is None:
            result.peak_rss, result.peak_rss_note = measure_or_reason(
                {
                    "kind": "encode",
                    "bundle": str(bundle.path),
                    "row": result.kind,
                    "variant": None if result.variant == "fp32" else result.variant,
                    "backend": result.backend if result.kind == "ours" else "ort-cpu",
                    "threads": threads,
                    "shape": [result.batch, result.seq],
                }
            )
        report["encoder"].append(asdict(result))


def _decoder(bundle, usable, report, memory):
    """GPT-2 rows: ours per backend and variant (and beside ort-cpu's, an OpenVINO prefill's and an int8 cache's where
    asked), the baselines, the floors; the plan is the report's config (its shapes resolved)."""
    from .decode import floors, make_rows, measure_floors, run_decode
    from .memory import NOT_ASKED, measure_or_reason

    config = report["config"]
    variants, threads, baselines = config["variants"], config["threads"], config["baselines"]
    prompt_lens, new_tokens = config["prompt_lens"], config["new_tokens"]
    prefill_backend, kv_cache = config["prefill_backend"], config["kv_cache"]

    rows = []
    for backend in usable:
        if backend == "torch":
            continue
        names = _variants_for(bundle, backend, variants)
        rows += make_rows(bundle, names, [], threads, backend=backend)
        if backend == "ort-cpu" and prefill_backend:  # the same variants, prompts on the other engine
            rows += make_rows(bundle, names, [], threads, backend=backend, prefill_backend=prefill_backend)
        if backend == "ort-cpu" and kv_cache:  # the same variants on their int8-cache twins
            rows += make_rows(
                bundle, kv8_rows(bundle, names), [], threads, backend=backend, kv_cache=kv_cache
            )
    extra = [b for b in baselines]
    if "torch" in usable and "torch" not in extra and "torch" in config["backends"]:
        extra.append("torch")
    rows += make_rows(bundle, [], extra, threads)
    results = run_decode(
        bundle, prompt_lens, new_tokens, rows, rounds=config["rounds"], warmup=config["warmup"]
    )
    bandwidth, gemm = measure_floors(threads or 2)
    for p in prompt_lens:
        report["floors"].append(
            {
                "prompt_len": p,
                "variant": "fp32",
                **floors(bundle, "model.onnx", p, new_tokens, bandwidth, gemm),
            }
        )
    for result in results:
        if not memory:
            result.peak_rss_note = NOT_ASKED
        elif result.error is None:
            spec = {
                "kind": "decode",
                "bundle": str(bundle.path),
                "row": result.kind,
                "threads": threads,
                "prompt_len": result.prompt_len,
                "new_tokens": min(new_tokens, 8),
            }
            if result.kind == "ours":
                spec["variant"] = result.variant
                spec["backend"] = result.backend or "ort-cpu"
                spec["prefill_backend"] = result.prefill_backend
                spec["kv_cache"] = result.kv_cache
            result.peak_rss, result.peak_rss_note = measure_or_reason(spec)
        report["decoder"].append(asdict(result))
