"""OpenVINO on the CPU behind the Session contract: a bundle's ONNX variant read by OpenVINO's ONNX frontend.

Measured on the tiny bundles with OpenVINO 2026.4: it runs every variant ONNX Runtime's CPU provider runs (fp32,
fused com.microsoft ops, fp16, dynamic int8, int8-qdq, MatMulNBits int8-wo/int4) within the parity tolerances of
each, except the in-place KV graphs: it reads their GroupQueryAttention but returns present as the new rows only,
not the shared past/present buffer ORT writes in place, so those are refused (GPT-2 decodes on the ping-pong graph).
A graph its CPU plugin cannot compile (DeBERTa-v2's export: an If of dynamic rank) is refused in one line too.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from .bundle import Bundle, weight_block
from .errors import UserError
from .feeds import CheckedFeeds

DEVICE = "CPU"


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise UserError("openvino is not installed (the ov backend): `pip install trtpipe[ov]`") from None
    return openvino


def compile_config(
    threads: int | None = None, performance: str = "LATENCY", precision: str = "f32", group: int | None = None
) -> dict:
    """The CPU plugin's settings. f32 unless the variant says bf16 (`optimize --precision bf16`, gated): on a
    bf16-capable CPU OpenVINO's default is bf16 (about 3e-2 off on fp32 hidden states), and an f16 hint becomes bf16
    on CPUs without fp16 arithmetic, so an fp16 variant computes in f32 too. Quantized ops (QDQ,
    DynamicQuantizeLinear, MatMulNBits) still run in int8 / int4 as the graph says; `group` (`weight_group`) is
    the width it quantizes a weight-only variant's activations in."""
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": performance}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if group:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = int(group)
    return config


def weight_group(entry: dict) -> int | None:
    """The activation group for a weight-only variant (MatMulNBits, `optimize --precision int4 | int8-wo`): its
    weight block. OpenVINO's CPU plugin quantizes the activations of compressed-weight MatMuls to int8 in groups of
    DYNAMIC_QUANTIZATION_GROUP_SIZE, 32 by default whatever the weights' block; ONNX Runtime's int8 compute
    (accuracy level 4) quantizes them per weight block. At the block OpenVINO adds in ONNX Runtime's groups, so it
    rounds nearer it (the trained demo GPT-2, int4 at block 16: logits 1.6e-4 off ONNX Runtime's against 1.0e-2 at
    32; int8-wo at 256: 7.3e-4 against 3.3e-2), and with fewer scales it prefills faster (GPT-2 124M, 2 threads,
    Zen 4: int4 at block 128 and int8-wo at 256, 1.18-1.27x at prompts 32 and 512; bench/ov_group.py). A group wider
    than the weights' block turns that int8 path off (f32 compute, measured twice the time), so it is the block
    itself. None (OpenVINO's default) for every other variant."""
    return weight_block(entry)


def runnable_variants(bundle: Bundle) -> list[str]:
    """The bundle's variants OpenVINO runs: all but the in-place and fused step KV graphs (bf16 runs here only)."""
    return [name for name, entry in bundle.variants.items() if entry.get("kv") not in ("inplace", "fused")]


def _reason(exc: Exception) -> str:
    """The line of an OpenVINO error that says what went wrong, not where ("Exception from src/…cpp:117:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (said or lines or [exc.__class__.__name__])[-1][:300]


def _name(port, known: set[str]) -> str:
    """The ONNX name of a port: a tensor may carry several names; prefer the one the manifest declares."""
    names = port.get_names()
    declared = sorted(names & known)
    return declared[0] if declared else port.get_any_name()


class OvSession(CheckedFeeds):
    """An OpenVINO compiled model (CPU) behind the Session contract. `run` is thread-safe: each call takes an idle
    infer request from a small pool (or makes one), so concurrent calls never share one."""

    def __init__(
        self,
        model_path: str | Path,
        threads: int | None = None,
        specs: list[dict] | None = None,
        limits: dict | None = None,
        variant: str = "fp32",
        outputs: list[str] | None = None,
        performance: str = "LATENCY",
        precision: str = "f32",
        group: int | None = None,
    ):
        ov = import_openvino()
        self.backend = "ov"
        self.variant = variant
        self.specs = specs
        self.limits = limits
        self.threads = threads
        self.device = "cpu"
        self.config = compile_config(threads, performance, precision, group)
        core = ov.Core()
        try:  # the ONNX frontend by name: read_model would also try TensorFlow's and others on a damaged file
            onnx_frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
            model = onnx_frontend.convert(onnx_frontend.load(str(model_path)))
        except Exception as exc:  # OpenVINO raises RuntimeError with its C++ call stack in the message
            raise UserError(
                f"OpenVINO could not read {model_path} ({_reason(exc)}); the file is corrupt or truncated: "
                "re-export the bundle with `trtpipe export ... --overwrite`"
            ) from None
        try:
            self.compiled = core.compile_model(model, DEVICE, self.config)
        except Exception as exc:  # a graph it reads but cannot run (DeBERTa-v2's dynamic-rank If, measured)
            raise UserError(
                f"OpenVINO's CPU plugin cannot run {Path(model_path).name} ({_reason(exc)}); "
                "use --backend ort-cpu for this model"
            ) from None
        # names as read, not as compiled: compiling folds Casts and renames tensors (graph_output_cast_0)
        known = {spec["name"] for spec in specs or []} | set(outputs or [])
        self.input_names = tuple(_name(port, known) for port in model.inputs)
        self.output_names = tuple(_name(port, known) for port in model.outputs)
        self.index = {name: i for i, name in enumerate(self.input_names)}
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        # what the plugin computes in (a bf16 hint needs the CPU's bf16 arithmetic)
        self.precision = compiled_precision(self.compiled)

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        variant: str | None = None,
        threads: int | None = None,
        verify: bool = True,
    ) -> OvSession:
        variant = variant or "fp32"
        entry = bundle.variant(variant)  # a UserError naming `trtpipe optimize` when it is missing
        if entry.get("kv") in ("inplace", "fused"):
            raise UserError(
                f"variant {variant} ({entry['kv']} KV cache, GroupQueryAttention) runs on ONNX Runtime only; "
                f"--backend ov runs: {', '.join(runnable_variants(bundle))} (or use --backend ort-cpu)"
            )
        path = bundle.model_path(variant, verify=verify)
        specs = entry.get("inputs") or bundle.manifest["inputs"]
        outputs = [o["name"] for o in entry.get("outputs") or bundle.manifest.get("outputs", [])]
        return cls(
            path,
            threads=threads,
            specs=specs,
            limits=bundle.limits,
            variant=variant,
            outputs=outputs,
            precision=entry.get("compute", "f32"),
            group=weight_group(entry),
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # copies: the request's output memory is reused by the next call that takes it
        return self.run_with(feeds, lambda outputs: {name: value.copy() for name, value in outputs.items()})

    def run_with(self, feeds: dict[str, np.ndarray], use):
        """`use(outputs)` on views of the infer request's own output memory, valid only inside the call (a caller
        that copies only part of the outputs, or copies them reshaped, saves a copy: `slots.py`)."""
        feeds = self.check(feeds)
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            inputs = {self.index[name]: value for name, value in feeds.items() if name in self.index}
            request.infer(inputs, share_inputs=True, share_outputs=True)
            return use({name: request.get_output_tensor(i).data for i, name in enumerate(self.output_names)})
        finally:
            self.idle.put(request)

    def close(self) -> None:
        self.idle = queue.SimpleQueue()
        self.compiled = None

    def __repr__(self) -> str:
        return f"OvSession(variant={self.variant!r}, inputs={self.input_names})"


def compiled_precision(compiled) -> str:
    """The inference precision a compiled model runs at: "bf16" or "f32" (a bf16 hint on a CPU without bf16
    arithmetic compiles at f32)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def openvino_info() -> dict | None:
    """For `trtpipe doctor`: OpenVINO's version and what its CPU device offers; None when not installed."""
    try:
        import openvino
    except ModuleNotFoundError:
        return None
    except Exception as exc:  # installed but broken (a missing shared library): the doctor says so
        return {"version": "?", "error": _reason(exc)}
    info: dict = {"version": openvino.__version__.split("-")[0]}
    try:
        core = openvino.Core()
        info["devices"] = list(core.available_devices)
        info["cpu"] = str(core.get_property(DEVICE, "FULL_DEVICE_NAME"))
        info["capabilities"] = [str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")]
        precision = core.get_property(DEVICE, "INFERENCE_PRECISION_HINT")  # an openvino Type: bf16 or f32
        info["default_precision"] = (
            precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
        )
    except Exception as exc:  # a broken install: say so in the doctor's report rather than fail the doctor
        info["error"] = _reason(exc)
    return info
