"""Triton model configurations (config.pbtxt), built as Triton's own protobuf and checked against its schema.

Configs are made as `ModelConfig` messages from tritonclient's copy of Triton's model_config.proto, written with
protobuf's text format, then parsed back and checked (`validate_config`): field names and enum values come from
the schema, so a config that Triton would refuse to parse cannot be written.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError, with_article

# Triton backends this package writes, and the platform each one pairs with (python has none).
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "python": ""}
# Names Triton itself knows (server docs, "backend" and "platform" fields); anything else is a typo.
KNOWN_BACKENDS = (
    "onnxruntime",
    "tensorrt",
    "python",
    "pytorch",
    "tensorflow",
    "openvino",
    "fil",
    "dali",
    "identity",
    "repeat",
    "square",
    "vllm",
    "tensorrtllm",
)
KNOWN_PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "ensemble": "",
}
TRITON_DTYPES = {
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bool": "TYPE_BOOL",
    "bytes": "TYPE_STRING",
}


class InvalidConfig(Exception):
    """A config.pbtxt that Triton would refuse (a bug in the writer, or a hand-edited file)."""


def model_config_pb2():
    """Triton's model-config protobuf module (shipped by tritonclient, the `triton` extra)."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError:
        raise UserError(
            "writing Triton configs needs tritonclient (Triton's model-config schema): "
            "pip install 'trtpipe[triton]'"
        ) from None
    return pb


# ---------------------------------------------------------------------------------------------- I/O tables


@dataclass(frozen=True)
class Tensor:
    """One input or output of a Triton model: dims exclude the batch dimension (it comes from max_batch_size)."""

    name: str
    dtype: str  # a key of TRITON_DTYPES
    dims: tuple[int, ...]
    optional: bool = False


def _last_dim(bundle: Bundle, output: str) -> int:
    """The size of an output's last axis when the manifest fixes it (hidden size, labels), else -1."""
    for entry in bundle.manifest["outputs"]:
        if entry["name"] == output and entry["shape"] and isinstance(entry["shape"][-1], int):
            return int(entry["shape"][-1])
    return -1


def python_io(bundle: Bundle) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs and outputs of the Python-backend model for a bundle's task: text in, answers out."""
    text = Tensor("text", "bytes", (1,))
    task = bundle.task
    if task == "embed":
        return [text], [Tensor("embedding", "float32", (_last_dim(bundle, "sentence_embedding"),))]
    if task == "classify":
        labels = _last_dim(bundle, "logits")
        return (
            [text, Tensor("text_pair", "bytes", (1,), optional=True)],
            [
                Tensor("label", "bytes", (1,)),
                Tensor("score", "float32", (1,)),
                Tensor("scores", "float32", (labels,)),  # probabilities in label-id order
            ],
        )
    if task == "ner":
        return [text], [Tensor("entities", "bytes", (1,))]  # JSON, as `trtpipe run --json` prints them
    if task == "fill-mask":
        return [text], [Tensor("fills", "bytes", (1,))]  # JSON
    if task == "qa":
        return (
            [Tensor("question", "bytes", (1,)), Tensor("context", "bytes", (1,))],
            [
                Tensor("answer", "bytes", (1,)),
                Tensor("score", "float32", (1,)),
                Tensor("start", "int64", (1,)),
                Tensor("end", "int64", (1,)),
            ],
        )
    if task == "generate":
        return (
            [
                text,
                Tensor("max_new_tokens", "int32", (1,), optional=True),
                Tensor("temperature", "float32", (1,), optional=True),
                Tensor("top_k", "int32", (1,), optional=True),
                Tensor("top_p", "float32", (1,), optional=True),
                Tensor("repetition_penalty", "float32", (1,), optional=True),
                Tensor("seed", "int64", (1,), optional=True),
                Tensor("stop", "bytes", (-1,), optional=True),
            ],
            [
                Tensor("completion", "bytes", (1,)),  # streamed: the text this token completes
                Tensor("ids", "int64", (-1,)),  # new token ids (streamed: one)
                Tensor("finish", "bytes", (1,)),  # eos | stop | length ("" until the last streamed token)
            ],
        )
    raise UserError(f"bundle {bundle.path}: task {task!r} cannot be served")  # validate_manifest bars this


def graph_io(bundle: Bundle, batched: bool) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's own inputs/outputs from the manifest: named (dynamic) axes become -1; the batch axis is
    dropped when Triton batches (max_batch_size > 0)."""

    def convert(entry: dict) -> Tensor:
        shape = entry["shape"][1:] if batched else entry["shape"]
        dims = tuple(d if isinstance(d, int) else -1 for d in shape)
        return Tensor(entry["name"], entry["dtype"], dims)

    return [convert(e) for e in bundle.manifest["inputs"]], [convert(e) for e in bundle.manifest["outputs"]]


def batchable(bundle: Bundle) -> bool:
    """Whether every graph tensor's first axis is the batch axis (then Triton can batch requests)."""
    entries = bundle.manifest["inputs"] + bundle.manifest["outputs"]
    return all(e["shape"] and e["shape"][0] == "batch" for e in entries)


# ---------------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Scheduling:
    max_batch: int = 8  # 0 = Triton does not batch
    instances: int = 1
    kind: str = "cpu"  # cpu | gpu
    dynamic_batching: bool = True
    queue_delay_us: int = 100


def build_config(
    name: str,
    backend: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    scheduling: Scheduling,
    default_model_filename: str | None = None,
    parameters: dict[str, str] | None = None,
    decoupled: bool = False,
):
    """A ModelConfig message for one model."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend=backend, max_batch_size=scheduling.max_batch)
    if PLATFORMS[backend]:
        config.platform = PLATFORMS[backend]
    if default_model_filename:
        config.default_model_filename = default_model_filename
    for spec in inputs:
        config.input.add(
            name=spec.name,
            data_type=pb.DataType.Value(TRITON_DTYPES[spec.dtype]),
            dims=list(spec.dims),
            optional=spec.optional,
        )
    for spec in outputs:
        config.output.add(
            name=spec.name, data_type=pb.DataType.Value(TRITON_DTYPES[spec.dtype]), dims=list(spec.dims)
        )
    if scheduling.dynamic_batching and scheduling.max_batch > 1:
        preferred = sorted({max(1, scheduling.max_batch // 2), scheduling.max_batch})
        config.dynamic_batching.preferred_batch_size.extend(preferred)
        config.dynamic_batching.max_queue_delay_microseconds = scheduling.queue_delay_us
    kind = pb.ModelInstanceGroup.KIND_GPU if scheduling.kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=scheduling.instances, kind=kind)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    if decoupled:
        config.model_transaction_policy.decoupled = True
    return config


def render_config(config) -> str:
    """config.pbtxt text for a ModelConfig, checked by parsing it back (`validate_config`)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(config)
    validate_config(text, expected_name=config.name)
    return text


# -------------------------------------------------------------------------------------------- validation


def validate_config(text: str, expected_name: str | None = None):
    """Parse config.pbtxt with Triton's ModelConfig schema and check what the schema alone cannot: known
    backend/platform names, a consistent pair, dims, batch sizes, instance kinds, unique tensor names.
    Returns the parsed ModelConfig; raises InvalidConfig naming the problem."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InvalidConfig(f"not a Triton ModelConfig: {exc}") from None
    problems = _problems(config, pb, expected_name)
    if problems:
        raise InvalidConfig("; ".join(problems))
    return config


def _problems(config, pb, expected_name: str | None) -> list[str]:
    problems: list[str] = []
    if not config.name:
        problems.append("no model name")
    elif expected_name is not None and config.name != expected_name:
        problems.append(f"name {config.name!r} differs from its directory {expected_name!r}")
    backend, platform = config.backend, config.platform
    if not backend and not platform:
        problems.append("neither backend nor platform is set")
    if backend and backend not in KNOWN_BACKENDS:
        problems.append(f"unknown backend {backend!r} (Triton knows {', '.join(KNOWN_BACKENDS)})")
    if platform:
        if platform not in KNOWN_PLATFORMS:
            problems.append(f"unknown platform {platform!r} (Triton knows {', '.join(KNOWN_PLATFORMS)})")
        elif backend and KNOWN_PLATFORMS[platform] != backend:
            problems.append(
                f"platform {platform!r} belongs to backend {KNOWN_PLATFORMS[platform]!r}, not {backend!r}"
            )
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size {config.max_batch_size} < 0")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors and platform != "ensemble":
            problems.append(f"no {kind}s")
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            problems.append(f"duplicate {kind} names {sorted(n for n in set(names) if names.count(n) > 1)}")
        for tensor in tensors:
            if not tensor.name:
                problems.append(f"{with_article(kind)} without a name")
            if tensor.data_type == pb.TYPE_INVALID:
                problems.append(f"{kind} {tensor.name!r} has no data_type")
            if not tensor.dims and not tensor.HasField("reshape"):
                problems.append(f"{kind} {tensor.name!r} has no dims")
            bad = [d for d in tensor.dims if d < -1 or d == 0]
            if bad:
                problems.append(
                    f"{kind} {tensor.name!r} has invalid dims {list(tensor.dims)} (use -1 for dynamic)"
                )
    if config.HasField("dynamic_batching"):
        if config.max_batch_size < 1:
            problems.append("dynamic_batching needs max_batch_size ≥ 1")
        for size in config.dynamic_batching.preferred_batch_size:
            if not 1 <= size <= max(config.max_batch_size, 1):
                problems.append(f"preferred_batch_size {size} is outside 1..max_batch_size")
    for group in config.instance_group:
        if group.count < 1:
            problems.append(f"instance_group count {group.count} < 1")
        if group.kind not in (pb.ModelInstanceGroup.KIND_CPU, pb.ModelInstanceGroup.KIND_GPU):
            problems.append(
                f"instance_group kind {pb.ModelInstanceGroup.Kind.Name(group.kind)} is not CPU or GPU"
            )
        if backend == "tensorrt" and group.kind == pb.ModelInstanceGroup.KIND_CPU:
            problems.append("the tensorrt backend runs on GPUs only (KIND_GPU)")
    if config.model_transaction_policy.decoupled and backend != "python":
        problems.append(f"decoupled responses need the python backend, not {backend!r}")
    return problems
