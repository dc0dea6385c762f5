"""Op-support lint: will TensorRT parse this ONNX variant, and if not, which node and why?

The authority is TensorRT's own ONNX parser (TensorRT-RTX's works on a CPU-only machine; TensorRT 10's needs a
GPU for its builder): it names each failing node, its operator and the reason. Without either, a versioned table
of the operators TensorRT's ONNX parser supports (onnx-tensorrt's operator matrix) flags unknown operators,
non-standard domains (ONNX Runtime contrib ops), asymmetric/uint8 quantization and unsupported data types — an
approximation: the parser has the last word.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# onnx-tensorrt's operator matrix. 8.5 lists what the parser imports; later releases add to it.
_TRT_8_5 = _names(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
    Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
    Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish Identity If ImageScaler
    InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
    Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor"""
)
_TRT_8_6 = _TRT_8_5 | {"LayerNormalization", "IsInf", "GroupNormalization"}
_TRT_10 = _TRT_8_6 | {"Gelu"}
SUPPORTED_OPS = {"8.5": _TRT_8_5, "8.6": _TRT_8_6, "10": _TRT_10}
MAX_OPSET = {"8.5": 17, "8.6": 17, "10": 20}
DEFAULT_TABLE = "10"
# Named as unsupported in the matrix (a clearer reason than "not in the table").
KNOWN_UNSUPPORTED = _names(
    """Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    HammingWindow HannWindow Hardmax MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
    NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul STFT
    SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique"""
)
# onnx.TensorProto data types
_STRING, _DOUBLE, _UINT64, _UINT8, _INT8 = 8, 11, 13, 2, 3
_TYPE_NAMES = {_STRING: "STRING", _DOUBLE: "DOUBLE", _UINT64: "UINT64", _UINT8: "UINT8"}


@dataclass
class Finding:
    node: str
    op: str
    reason: str
    severity: str = "error"  # error: the build fails; warning: it may build, check the parser


@dataclass
class LintReport:
    bundle: str
    variant: str
    file: str
    method: str  # "TensorRT-RTX 1.7.1 ONNX parser" | "operator table (TensorRT 10)"
    findings: list[Finding] = field(default_factory=list)
    nodes: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


# ------------------------------------------------------------------------------------------- with the parser


def parse_onnx(trt, onnx_path: Path, logger) -> tuple[object, object, object, list[Finding]]:
    """Parse with TensorRT's ONNX parser into a strongly typed network. Returns (builder, network, parser,
    findings); keep all three alive together (the parser refers to the network, the network to the builder)."""
    from ..runtime.trt.platform import native_stdout_to_stderr

    builder = trt.Builder(logger)
    flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flag)
    parser = trt.OnnxParser(network, logger)
    with native_stdout_to_stderr():
        parser.parse_from_file(str(onnx_path))
    findings = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        reason = str(error.desc()).strip() or error.code().name
        if reason == "false":  # the checker's assertion text: the op is not supported as configured
            reason = f"{error.node_operator()} is not supported here (parser check {error.func()})"
        findings.append(
            Finding(error.node_name() or f"node {error.node()}", error.node_operator() or "?", reason)
        )
    return builder, network, parser, findings


def lint_with_parser(trt, onnx_path: Path) -> list[Finding]:
    from ..runtime.trt.platform import trt_logger

    _, _, _, findings = parse_onnx(trt, onnx_path, trt_logger(trt))
    return findings


# ---------------------------------------------------------------------------------------------- with a table


def _zero_point_nonzero(node, initializers: dict) -> tuple[bool, int | None]:
    """(has a non-zero zero point, its data type) for QuantizeLinear/DequantizeLinear."""
    from onnx import numpy_helper

    if len(node.input) < 3 or not node.input[2]:
        return False, None
    tensor = initializers.get(node.input[2])
    if tensor is None:
        return False, None
    return bool(numpy_helper.to_array(tensor).any()), tensor.data_type


def _walk(graph, prefix: str = ""):
    for node in graph.node:
        yield prefix, node
        for attr in node.attribute:
            if attr.type == 5:  # GRAPH
                yield from _walk(attr.g, f"{prefix}{node.name}/")
            elif attr.type == 10:  # GRAPHS
                for sub in attr.graphs:
                    yield from _walk(sub, f"{prefix}{node.name}/")


def lint_with_table(model, table: str = DEFAULT_TABLE) -> tuple[list[Finding], int, dict[str, int]]:
    """Check an onnx.ModelProto against the operator table of a TensorRT version. Returns (findings, nodes, ops)."""
    supported = SUPPORTED_OPS[table]
    findings: list[Finding] = []
    initializers = {t.name: t for t in model.graph.initializer}
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = opsets.get("ai.onnx", 0)
    if opset > MAX_OPSET[table]:
        findings.append(
            Finding(
                "(model)",
                "opset",
                f"opset {opset} is newer than TensorRT {table}'s table covers ({MAX_OPSET[table]}); re-export with "
                f"--opset {MAX_OPSET[table]} if the parser rejects it",
                "warning",
            )
        )
    for value in list(model.graph.input) + list(model.graph.output):
        kind = value.type.tensor_type.elem_type
        if kind == _STRING:
            findings.append(Finding(value.name, "graph I/O", "STRING tensors are not supported by TensorRT"))
        elif kind in (_DOUBLE, _UINT64):
            findings.append(
                Finding(
                    value.name,
                    "graph I/O",
                    f"{_TYPE_NAMES[kind]} is not a TensorRT type (it is cast down)",
                    "warning",
                )
            )
    ops: Counter = Counter()
    nodes = 0
    for prefix, node in _walk(model.graph):
        nodes += 1
        name = prefix + (node.name or f"<{node.op_type}#{nodes}>")
        domain = node.domain or "ai.onnx"
        ops[node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"] += 1
        if domain not in ("ai.onnx", "ai.onnx.ml") and domain != "":
            findings.append(
                Finding(
                    name,
                    f"{domain}.{node.op_type}",
                    "custom-domain op (ONNX Runtime contrib?): TensorRT parses standard ONNX only; build from a "
                    "standard variant (fp32, fp16, int8-qdq)",
                )
            )
            continue
        if node.op_type in KNOWN_UNSUPPORTED:
            findings.append(
                Finding(name, node.op_type, f"{node.op_type} is not supported by TensorRT {table}")
            )
            continue
        if node.op_type not in supported:
            findings.append(
                Finding(
                    name,
                    node.op_type,
                    f"{node.op_type} is not in TensorRT {table}'s supported-operator table",
                )
            )
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            nonzero, data_type = _zero_point_nonzero(node, initializers)
            if nonzero:
                findings.append(
                    Finding(
                        name, node.op_type, "non-zero zero point: TensorRT takes symmetric quantization only"
                    )
                )
            elif data_type == _UINT8:
                findings.append(
                    Finding(name, node.op_type, "UINT8 quantization: TensorRT takes INT8 (symmetric)")
                )
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to == _STRING:
                findings.append(Finding(name, "Cast", "Cast to STRING is not supported"))
            elif to == _DOUBLE:
                findings.append(
                    Finding(name, "Cast", "Cast to DOUBLE: TensorRT computes it in FLOAT", "warning")
                )
    return findings, nodes, dict(sorted(ops.items()))


# -------------------------------------------------------------------------------------------------- the lint


def parser_flavour(requested: str | None = None) -> str | None:
    """Which installed TensorRT can parse here: rtx works without a GPU; trt10's builder needs one."""
    from ..runtime.trt.platform import FLAVOURS, module_available, nvidia_gpus

    if requested:
        if requested not in FLAVOURS:
            raise UserError(f"unknown --flavour {requested!r}; choose trt10 or rtx")
        return requested
    if module_available("tensorrt_rtx"):
        return "rtx"
    if module_available("tensorrt") and nvidia_gpus():
        return "trt10"
    return None


def lint_bundle(
    bundle_path: Path | str | Bundle,
    variant: str | None = None,
    flavour: str | None = None,
    table: bool = False,
) -> LintReport:
    """Lint a variant: with TensorRT's parser where installed (or `flavour`), else (or with table=True) the table."""
    from ..runtime.trt.platform import FLAVOUR_NAMES, import_flavour

    bundle = bundle_path if isinstance(bundle_path, Bundle) else Bundle.load(bundle_path)
    variant = variant or "fp32"
    if variant not in bundle.variants:
        raise UserError(
            f"bundle {bundle.path} has no variant {variant!r} (has: {', '.join(sorted(bundle.variants))}); "
            f"create it with `trtpipe optimize {bundle.path} --precision {variant}`"
        )
    path = bundle.model_path(variant)
    entry = bundle.variants[variant]
    report = LintReport(str(bundle.path), variant, entry["file"], "")
    chosen = None if table else parser_flavour(flavour)
    onnx_model = None
    try:
        import onnx

        onnx_model = onnx.load(str(path), load_external_data=False)
    except ImportError:
        if chosen is None:
            raise UserError(
                "lint needs TensorRT's ONNX parser or the onnx package: `pip install trtpipe[rtx]` "
                "(TensorRT-RTX, works without a GPU) or `pip install onnx`"
            ) from None
    if onnx_model is not None:
        table_findings, report.nodes, report.ops = lint_with_table(onnx_model)
    if chosen is not None:
        trt = import_flavour(chosen)
        report.method = f"{FLAVOUR_NAMES[chosen]} {trt.__version__} ONNX parser"
        report.findings = lint_with_parser(trt, path)
        if onnx_model is not None:  # keep the table's warnings (opset, types) as hints
            report.findings += [f for f in table_findings if f.severity == "warning"]
    else:
        report.method = f"operator table (TensorRT {DEFAULT_TABLE}; install tensorrt-rtx for the real parser)"
        report.findings = table_findings
    return report
