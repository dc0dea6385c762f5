"""The OpenVINO peers, measured beside trtpipe in one run (bench/openvino_peers.py):

- encoders: OpenVINO's runtime called directly on the bundle's own model.onnx (`Core.read_model` +
  `compile_model`, at f32 or at its default precision, bf16 on a bf16 CPU), and OpenVINO + NNCF int8
  (`nncf.quantize`, its default recipe for transformers, on the same calibration text our int8 uses);
- GPT-2: openvino-genai (`LLMPipeline`, `ContinuousBatchingPipeline`) on optimum-intel's OpenVINO export of the
  bundle's own weights (a stateful KV cache and an OpenVINO tokenizer). optimum-intel and openvino-genai live in
  their own venv (.venv-ov-genai, `make bench-peers`): they run in a worker process (ov_genai_worker.py) that this
  module drives one command at a time, so its rows interleave with ours round by round.

Everything is rebuilt offline from the bundle and cached beside the other peers (peers.cache_root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from .peers import Timed, _cached, hf_checkpoint

ROOT = Path(__file__).resolve().parents[2]
GENAI_VENV = Path(os.environ.get("TRTPIPE_OV_GENAI_VENV", ROOT / ".venv-ov-genai"))
WORKER = Path(__file__).with_name("ov_genai_worker.py")


# ------------------------------------------------------------------------------------------- encoders


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise UserError("the OpenVINO peer needs openvino: pip install trtpipe[ov]") from None
    return openvino


def compile_properties(threads: int | None, precision: str | None) -> dict:
    """What a user of plain OpenVINO passes: the latency hint, the thread count, and an inference precision
    (None: OpenVINO's default, bf16 on a CPU with bf16 arithmetic)."""
    properties: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = int(threads)
    if precision:
        properties["INFERENCE_PRECISION_HINT"] = precision
    return properties


def default_precision() -> str:
    """OpenVINO's CPU default inference precision on this machine (bf16 or f32)."""
    ov = _import_openvino()
    value = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class OvPeerRow:
    """OpenVINO's runtime on an OpenVINO model (read from an ONNX file or an IR), outputs by name. `session` is the
    compiled model (accuracy helpers look for it: the row returns named outputs like our sessions)."""

    backend = "openvino"

    def __init__(
        self, model_path: str | Path, threads: int | None, precision: str | None, label: str, variant
    ):
        ov = _import_openvino()
        core = ov.Core()
        model = core.read_model(str(model_path))
        self.properties = compile_properties(threads, precision)
        self.session = core.compile_model(model, "CPU", self.properties)
        self.request = self.session.create_infer_request()
        self.inputs = {port.get_any_name() for port in model.inputs}
        self.outputs = [port.get_any_name() for port in model.outputs]
        self.label, self.variant = label, variant
        precision = self.session.get_property("INFERENCE_PRECISION_HINT")  # what it compiled to: f32 or bf16
        self.precision = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)

    def run(self, feed: dict) -> dict:
        self.request.infer({k: v for k, v in feed.items() if k in self.inputs}, share_inputs=True)
        return {name: self.request.get_output_tensor(i).data.copy() for i, name in enumerate(self.outputs)}


def nncf_int8(bundle: Bundle, calibration: list[dict]) -> tuple[Path, dict]:
    """OpenVINO + NNCF int8: `nncf.quantize` (preset performance, model_type TRANSFORMER: its default recipe for
    transformers) on the OpenVINO model read from the bundle's model.onnx, calibrated on `calibration` (the feeds
    our int8 calibrates on). Cached; returns the IR path and what the recipe did (FakeQuantize count, seconds)."""

    def make(tmp: Path) -> None:
        ov = _import_openvino()
        try:
            import nncf
        except ImportError:
            raise UserError("the NNCF peer needs nncf: pip install 'trtpipe[export]'") from None
        started = time.perf_counter()
        model = ov.Core().read_model(str(bundle.model_path("fp32")))
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
        )
        tmp.mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized, str(tmp / "model.xml"))
        info = {
            "nncf": nncf.__version__,
            "calibration_batches": len(calibration),
            "seconds": time.perf_counter() - started,
        }
        (tmp / "nncf.json").write_text(json.dumps(info, indent=2))

    folder = _cached(bundle, "nncf-int8", "nncf.json", make)
    info = json.loads((folder / "nncf.json").read_text())
    return folder / "model.xml", {**info, **matmul_kinds(folder / "model.xml")}


_SHAPE_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Broadcast")


def _int8_source(output) -> str | None:
    """What feeds a MatMul input in an NNCF model: "activation" (a FakeQuantize), "weight" (an int8 constant
    dequantised: Convert [→ Subtract] → Multiply), or None (float), looking through shape-only ops."""
    node = output.get_node()
    while node.get_type_name() in _SHAPE_OPS:
        node = node.input_value(0).get_node()
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return "activation"
    if kind == "Multiply":
        node = node.input_value(0).get_node()
        if node.get_type_name() == "Subtract":
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
    if node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() in ("i8", "u8"):
        return "weight"
    return None


def matmul_kinds(model_path: Path) -> dict:
    """How many of an OpenVINO model's MatMuls run int8: weight × activation, activation × activation (attention's
    Q·Kᵀ), and how many stay float."""
    ov = _import_openvino()
    counts = {"matmuls": 0, "int8_weight": 0, "int8_activation": 0, "float": 0}
    for op in ov.Core().read_model(str(model_path)).get_ops():
        if op.get_type_name() != "MatMul":
            continue
        counts["matmuls"] += 1
        a, b = _int8_source(op.input_value(0)), _int8_source(op.input_value(1))
        if a and b:
            counts["int8_weight" if "weight" in (a, b) else "int8_activation"] += 1
        else:
            counts["float"] += 1
    return counts


def qdq_matmul_kinds(onnx_path: Path) -> dict:
    """How many of a QDQ ONNX graph's MatMuls take both inputs from DequantizeLinear (int8), and how many not."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    int8 = sum(all(producer.get(i) == "DequantizeLinear" for i in node.input) for node in matmuls)
    return {"matmuls": len(matmuls), "int8": int8, "float": len(matmuls) - int8}


# ---------------------------------------------------------------------------------------------- GPT-2


def genai_python() -> Path:
    python = GENAI_VENV / "bin" / "python"
    if not python.is_file():
        raise UserError(
            f"the openvino-genai peer runs in its own venv, {GENAI_VENV} is missing: `make bench-peers`"
        )
    return python


def genai_export(bundle: Bundle, weight_format: str) -> Path:
    """optimum-intel's OpenVINO export (`optimum-cli export openvino --weight-format F`) of the bundle's own
    checkpoint, with its OpenVINO tokenizer/detokenizer, cached. Its defaults otherwise (int4: asymmetric, group
    size 128, embeddings and head int8), as its users get them."""
    python = genai_python()
    checkpoint = hf_checkpoint(bundle)

    def make(tmp: Path) -> None:
        cli = python.parent / "optimum-cli"
        command = [
            str(cli),
            "export",
            "openvino",
            "--model",
            str(checkpoint),
            "--task",
            "text-generation-with-past",
        ]
        command += ["--weight-format", weight_format, str(tmp)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode or not (tmp / "openvino_model.xml").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:] or ["?"]
            raise UserError(
                f"optimum-cli export openvino --weight-format {weight_format} failed: {tail[0][:200]}"
            )
        (tmp / "export.json").write_text(json.dumps({"command": command[1:], "weight_format": weight_format}))

    return _cached(bundle, f"ov-genai-{weight_format}", "export.json", make)


def ir_weight_bytes(folder: Path) -> int:
    """Bytes of the IR's weights file (every constant: weights, scales, zero points, position embeddings)."""
    return (folder / "openvino_model.bin").stat().st_size


class GenaiWorker:
    """A peer's worker process in its own venv (by default .venv-ov-genai's ov_genai_worker.py; the llama.cpp peer
    passes its own): one JSON command per line, one answer per line."""

    peer = "openvino-genai"

    def __init__(self, python: Path | None = None, script: Path | None = None, env: dict | None = None):
        self.process = subprocess.Popen(
            [str(python or genai_python()), str(script or WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
        )
        self.versions = self.ask(op="info")

    def ask(self, **command) -> dict:
        if self.process.poll() is not None:
            raise UserError(f"the {self.peer} worker exited ({self.process.returncode})")
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise UserError(f"the {self.peer} worker exited ({self.process.wait()}) during {command['op']}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise UserError(answer["error"])
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def genai_properties(threads: int | None, precision: str | None, kv: str | None) -> dict:
    properties: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = int(threads)
    if precision:
        properties["INFERENCE_PRECISION_HINT"] = precision
    if kv:
        properties["KV_CACHE_PRECISION"] = kv
    return properties


class GenaiOvDecoder:
    """openvino-genai on optimum-intel's export, behind the decoder-row contract of benchmark.decode.run_decode:
    run(prompt ids, new tokens) -> Timed, a clock at each token as its streamer receives it."""

    kind = "ov-genai"

    def __init__(
        self,
        worker: GenaiWorker,
        name: str,
        folder: Path,
        label: str,
        variant: str,
        properties: dict,
        pipeline: str = "llm",
        scheduler: dict | None = None,
    ):
        self.worker, self.name, self.folder = worker, name, folder
        self.label, self.variant, self.backend = label, variant, "ov-genai"
        worker.ask(
            op="load", name=name, path=str(folder), kind=pipeline, properties=properties, scheduler=scheduler
        )

    def run(self, prompt: list[int], new_tokens: int) -> Timed:
        answer = self.worker.ask(
            op="generate", name=self.name, ids=[int(i) for i in prompt], new_tokens=new_tokens
        )
        return Timed(answer["ttft"], answer["steps"], answer["ids"])

    def batch(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
        answer = self.worker.ask(
            op="batch", name=self.name, prompts=[[int(i) for i in p] for p in prompts], new_tokens=new_tokens
        )
        return answer["seconds"], answer["ids"]

    def tokenize(self, text: str) -> list[int]:
        return self.worker.ask(op="tokenize", name=self.name, text=text)["ids"]


def first_divergence(ids: list[int], reference: list[int]) -> int:
    """How many greedy tokens match the reference before the first that differs."""
    for index, (a, b) in enumerate(zip(ids, reference)):
        if a != b:
            return index
    return min(len(ids), len(reference))
