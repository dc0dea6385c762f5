"""Optimize stage: each precision on each family (tiny models), the graph features it must have, the gates."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.optimize.variants import optimize_bundle
from trtpipe.runtime import Bundle, CheckFailed, UserError, load_pipeline, open_session
from trtpipe.runtime.store import BundleLock

FAMILIES = [("tiny-bert", "embed"), ("tiny-albert", "classify"), ("tiny-gpt2", "generate")]
# On hidden-32 toys int4 and static int8 of a peaked LM head may miss their gate: that is the gate working.
ALWAYS_PASS = {
    "tiny-bert": ("fused", "fp16", "int8", "int8-qdq", "int8-wo"),
    "tiny-albert": ("fused", "fp16", "int8", "int8-qdq", "int8-wo"),
    "tiny-gpt2": ("fused", "fp16"),
}


@pytest.fixture(scope="module")
def optimized(make_bundle, tmp_path_factory):
    """A private copy of each tiny bundle with every precision added (force=True so gated results are recorded)."""
    root = tmp_path_factory.mktemp("optimized")
    out = {}
    for preset, task in FAMILIES:
        path = root / f"{preset}-{task}"
        shutil.copytree(make_bundle(preset, task), path)
        for precision in ("fused", "fp16", "int8", "int8-qdq", "int8-wo", "int4"):
            optimize_bundle(path, precision, force=True)
        out[preset] = path
    return out


def _copy_as_real_weights(source, target):
    """A copy of a tiny bundle that says it has real weights, so `make optimize` enforces its gates."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["source"]["random_weights"] = False
    (target / "manifest.json").write_text(json.dumps(manifest))


def _ops(path, name):
    bundle = Bundle.load(path)
    model = onnx.load(str(bundle.model_path(name)))
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return model, counts


@pytest.mark.parametrize("preset", [p for p, _ in FAMILIES])
def test_every_precision_is_written_with_its_manifest_entry(optimized, preset):
    bundle = Bundle.load(optimized[preset])
    for precision in ("fused", "fp16", "int8", "int8-qdq", "int8-wo", "int4"):
        entry = bundle.variants[precision]
        assert entry["made_from"] == "fp32" and entry["precision"] == precision
        assert entry["file"] == f"model.{precision}.onnx"
        assert set(entry["tools"]) >= {"onnxruntime", "onnx", "trtpipe"}
        assert entry["gate"]["verdict"] in ("pass", "fail") and "metrics" in entry["gate"]
        assert entry["ort_only"] == (precision in ("fused", "int8", "int8-wo", "int4"))
        bundle.model_path(precision)  # sha256 verified
    for precision in ALWAYS_PASS[preset]:
        assert bundle.variants[precision]["gate"]["verdict"] == "pass", (
            precision,
            bundle.variants[precision]["gate"],
        )


def test_fusion_counts_and_albert_sharing(optimized):
    _, bert = _ops(optimized["tiny-bert"], "fused")
    assert bert.get("Attention", 0) == 2 and bert.get("SkipLayerNormalization", 0) == 4
    assert bert.get("BiasGelu", 0) + bert.get("FastGelu", 0) + bert.get("Gelu", 0) == 2
    report = Bundle.load(optimized["tiny-bert"]).variants["fused"]["report"]
    assert report["fused_ops"]["Attention"] == 2 and report["missing"] == []
    albert = Bundle.load(optimized["tiny-albert"])
    assert albert.variants["fused"]["bytes"] <= 1.1 * albert.model["parameter_bytes"]
    # ORT fuses every shared layer's attention but the first: expected, named in the report, not "missing"
    report = albert.variants["fused"]["report"]
    assert report["fused_ops"]["Attention"] == albert.model["num_layers"] - 1 and report["missing"] == []
    assert "the first of ALBERT's shared layers" in report["unfusable"]
    _, gpt = _ops(optimized["tiny-gpt2"], "fused")
    assert gpt.get("SkipLayerNormalization", 0) >= 3 and gpt.get("FastGelu", 0) + gpt.get("BiasGelu", 0) >= 2


def test_albert_base_fusion_keeps_shared_weights_shared(make_bundle, tmp_path):
    path = tmp_path / "albert"
    shutil.copytree(make_bundle("albert-base", "embed"), path)
    entry = optimize_bundle(path, "fused")
    bundle = Bundle.load(path)
    assert entry["report"]["dedup_bytes_saved"] > 50e6  # twelve packed QKV copies collapsed into one
    assert (
        entry["report"]["fused_ops"]["Attention"] == 11 and entry["report"]["missing"] == []
    )  # all but the first
    assert entry["bytes"] <= 1.1 * bundle.model["parameter_bytes"], (
        entry["bytes"] / bundle.model["parameter_bytes"]
    )


@pytest.mark.parametrize("preset", [p for p, _ in FAMILIES])
def test_fp16_keeps_fp32_islands_and_fp32_io(optimized, preset):
    model, ops = _ops(optimized[preset], "fp16")
    inits = {i.name: i for i in model.graph.initializer}
    assert ops.get("Cast", 0) > 0
    for value in list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name  # I/O stays fp32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in inits.values())
    for node in model.graph.node:  # LayerNorm runs in fp32: its scale is an fp32 initializer
        if node.op_type == "LayerNormalization" and node.input[1] in inits:
            assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT
    report = Bundle.load(optimized[preset]).variants["fp16"]["report"]
    assert report["fp32_ops"].get("LayerNormalization", 0) > 0 and report["fp32_nodes"]["outputs"]


def test_fp16_blocks_the_attention_mask_overflow(optimized):
    report = Bundle.load(optimized["tiny-bert"]).variants["fp16"]["report"]
    assert report["peak_abs_activation"] > 65504  # transformers' mask value, found by the scan
    assert report["fp32_nodes"]["overflow"]


@pytest.mark.parametrize("preset", [p for p, _ in FAMILIES])
def test_int8_dynamic_quantises_weight_matmuls_only(optimized, preset):
    model, ops = _ops(optimized[preset], "int8")
    inits = {i.name for i in model.graph.initializer}
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) > 0
    for node in model.graph.node:  # activation × activation MatMuls (QKᵀ, AV) stay fp32
        if node.op_type == "MatMul":
            assert node.input[1] not in inits or "lm_head" not in node.name
    entry = Bundle.load(optimized[preset]).variants["int8"]
    assert sum(entry["report"]["counts"].values()) > 0 and entry["report"]["plans_tried"]
    fp32 = onnx.load(str(Bundle.load(optimized[preset]).model_path("fp32")))
    fp32_inits = {i.name for i in fp32.graph.initializer}
    weight_matmuls = sum(1 for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in fp32_inits)
    quantized = ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0)
    assert quantized >= weight_matmuls - entry["report"]["counts"]["fp32"]  # every layer, shared ones too


def test_int8_weights_cannot_saturate_avx2_kernels(optimized):
    """Without VNNI, ONNX Runtime's u8 × s8 kernels add product pairs in 16 bits with saturation: full-range s8
    weights overflowed them (MiniLM's dynamic int8 fell to 0.959 / 0.922 cosine on an AVX2 EPYC). Dynamic int8 stores
    u8 weights (u8 × u8 kernels); int8-qdq keeps its s8 weights in [-64, 63] — wherever the bundle was built."""
    bundle = Bundle.load(optimized["tiny-bert"])

    def quantized(precision, dtype):
        model = onnx.load(str(bundle.model_path(precision)))
        arrays = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == dtype]
        return [a for a in arrays if a.size > 64]  # weights, not scales or zero points

    dynamic = quantized("int8", onnx.TensorProto.UINT8)
    assert dynamic and not quantized("int8", onnx.TensorProto.INT8)
    assert max(int(a.max()) - int(a.min()) for a in dynamic) > 200  # the full 8 bits, asymmetric
    static = quantized("int8-qdq", onnx.TensorProto.INT8)
    assert static and max(int(np.abs(a.astype(np.int16)).max()) for a in static) <= 64
    assert all(int(np.abs(a.astype(np.int16)).max()) >= 48 for a in static)  # 7 bits used, not fewer


@pytest.mark.parametrize("preset", [p for p, _ in FAMILIES])
def test_int8_qdq_is_symmetric_per_channel(optimized, preset):
    model, ops = _ops(optimized[preset], "int8-qdq")
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    inits = {i.name: i for i in model.graph.initializer}
    per_channel = 0
    for node in model.graph.node:
        if (
            node.op_type in ("QuantizeLinear", "DequantizeLinear")
            and len(node.input) > 2
            and node.input[2] in inits
        ):
            zero_point = numpy_helper.to_array(inits[node.input[2]])
            assert zero_point.dtype == np.int8 and not zero_point.any()  # symmetric int8
            per_channel += zero_point.size > 1
    assert per_channel > 0


@pytest.mark.parametrize("preset", [p for p, _ in FAMILIES])
@pytest.mark.parametrize("precision, bits", [("int4", 4), ("int8-wo", 8)])
def test_weight_only_uses_matmulnbits(optimized, preset, precision, bits):
    model, ops = _ops(optimized[preset], precision)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert nodes and all(
        onnx.helper.get_attribute_value(a) == bits for n in nodes for a in n.attribute if a.name == "bits"
    )
    if preset == "tiny-gpt2":
        assert Bundle.load(optimized[preset]).variants[precision]["report"]["lm_head"] is True
        assert len(nodes) == 4 * 2 + 1  # four per layer plus the LM head


def test_gpt2_weight_variants_have_in_place_twins_that_agree(optimized):
    bundle = Bundle.load(optimized["tiny-gpt2"])
    for precision in ("int8", "int8-wo", "int4"):
        twin = bundle.variants[f"{precision}.kv-inplace"]
        parity = twin["parity"]["ort-cpu"]
        assert parity["verdict"] == "pass" and parity["top1"] == 1.0, twin["parity"]
        assert parity["max_abs_logits"] <= 5e-2 and parity["atol"] == 5e-2


def test_variants_run_through_the_runtime(optimized):
    from trtpipe.runtime import Generator

    pipe = load_pipeline(optimized["tiny-bert"], variant="int8")
    vectors = pipe.embed(["quantised embeddings still work"])
    assert vectors.shape == (1, 32) and abs(np.linalg.norm(vectors) - 1) < 1e-3
    gen = Generator(optimized["tiny-gpt2"], variant="int8-wo")
    assert gen.inplace and gen.variant == "int8-wo.kv-inplace"
    assert len(gen.generate("The list of", max_new_tokens=5)[0].ids) >= 1
    with pytest.raises(UserError, match="variant"):
        open_session(optimized["tiny-bert"], variant="int3")


def test_gate_refuses_a_broken_variant_and_writes_nothing(make_bundle, copy_bundle, monkeypatch):
    """Simulate a broken quantiser: the candidate's weights are scrambled; the gate must refuse it."""
    from trtpipe.optimize import variants

    path = copy_bundle(make_bundle("tiny-bert", "classify"))
    original = variants._build

    def broken(*args, **kwargs):
        model, report, plan = original(*args, **kwargs)
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
                array = numpy_helper.to_array(init)
                init.CopyFrom(
                    numpy_helper.from_array(rng.permutation(array.ravel()).reshape(array.shape), init.name)
                )
        return model, report, plan

    monkeypatch.setattr(variants, "_build", broken)
    with pytest.raises(CheckFailed, match="label_agreement = .* \\(needs >= 0.99\\)"):
        optimize_bundle(path, "int8-wo")
    assert "int8-wo" not in Bundle.load(path).variants and not (path / "model.int8-wo.onnx").exists()
    assert not [p for p in path.iterdir() if ".tmp-" in p.name]
    result = CliRunner().invoke(app, ["optimize", str(path), "--precision", "int8-wo"])
    assert result.exit_code == 1 and "needs >= 0.99" in result.output
    entry = optimize_bundle(path, "int8-wo", force=True)
    assert entry["gate"]["verdict"] == "fail" and entry["gate"]["forced"] is True


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_methods(make_bundle, copy_bundle, method):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    entry = optimize_bundle(path, "int8-qdq", method=method)
    assert entry["report"]["method"] == method and entry["gate"]["verdict"] == "pass"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "int3"], "unknown precision 'int3'"),
        (["--precision", "int8-qdq", "--method", "magic"], "unknown calibration method"),
        (["--precision", "int4", "--block-size", "48"], "--block-size"),
        (["--precision", "int8", "--calibration", "{missing}"], "does not exist"),
        (["--precision", "int8", "--calibration", "{empty}"], "is empty"),
        (["--precision", "int8", "--calibration", "{latin1}"], "not UTF-8"),
    ],
)
def test_optimize_bad_input(make_bundle, copy_bundle, tmp_path, args, message):
    path = copy_bundle(make_bundle("tiny-bert", "classify"))
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    files = {
        "missing": tmp_path / "nope.txt",
        "empty": tmp_path / "empty.txt",
        "latin1": tmp_path / "latin1.txt",
    }
    before = json.loads((path / "manifest.json").read_text())
    result = CliRunner().invoke(app, ["optimize", str(path), *[a.format(**files) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert json.loads((path / "manifest.json").read_text()) == before


def test_existing_variant_lock_and_missing_source(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "classify"))
    optimize_bundle(path, "int8-wo")
    with pytest.raises(UserError, match="already has the int8-wo variant; pass --overwrite"):
        optimize_bundle(path, "int8-wo")
    with BundleLock(path), pytest.raises(UserError, match="another trtpipe process"):
        optimize_bundle(path, "fp16")
    (path / "model.onnx").unlink()
    with pytest.raises(UserError, match="model.onnx .* is missing"):
        optimize_bundle(path, "fp16")


def test_optimize_defaults_forces_random_weights_and_skips_refused_real_ones(
    make_bundle, tmp_path, monkeypatch
):
    """`make optimize`: random-weight bundles get their variants with the gate recorded as forced; on real weights a
    refused variant is not written and the run goes on."""
    from trtpipe.optimize import defaults, variants

    out = tmp_path / "bundles"
    out.mkdir()
    random_bundle = out / "random"
    real_bundle = out / "real"
    shutil.copytree(make_bundle("tiny-bert", "fill-mask"), random_bundle)
    _copy_as_real_weights(make_bundle("tiny-bert", "fill-mask"), real_bundle)
    monkeypatch.setitem(defaults.OPTIMIZE, "fill-mask", ["int8"])
    real_optimize = variants.optimize_bundle

    def gate_refuses_real(path, precision, **kwargs):
        if path.name == "real":
            assert kwargs.get("force") is False
            raise CheckFailed("int8 variant fails its accuracy gate")
        return real_optimize(path, precision, **kwargs)

    monkeypatch.setattr(defaults, "optimize_bundle", gate_refuses_real)
    result = defaults.optimize_defaults(out)
    assert result == {"written": ["random int8"], "refused": ["real int8"], "skipped": []}
    assert Bundle.load(random_bundle).variants["int8"]["gate"]["forced"] is True
    assert "int8" not in Bundle.load(real_bundle).variants
    assert defaults.optimize_defaults(out) == {
        "written": [],
        "refused": ["real int8"],
        "skipped": [],
    }  # present ones are kept


def test_weight_only_walks_its_rungs_until_the_calibration_gate_passes(make_bundle, monkeypatch):
    from trtpipe.optimize import search

    bundle = Bundle.load(make_bundle("tiny-gpt2", "generate"))
    verdicts = iter([False, False, True])
    monkeypatch.setattr(search, "calibration_gate", lambda *a, **k: lambda model: next(verdicts))
    model, report, _ = search.weight_only_gated(
        bundle, bundle.model_path("fp32"), "int4", ["some text"], 32, True, 4, force=False
    )
    assert [(t["block_size"], t["lm_head"], t["passed_calibration"]) for t in report["plans_tried"]] == [
        (32, True, False),
        (32, False, False),
        (16, False, True),
    ]
    assert (report["block_size"], report["lm_head"]) == (16, False)
    assert report["fp32_weight_matmuls_left"] >= 1  # the LM head stayed fp32
    blocks = {
        a.i
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "block_size"
    }
    assert blocks == {16}
    # --force keeps exactly what was asked for: one rung, no search
    model, report, _ = search.weight_only_gated(
        bundle, bundle.model_path("fp32"), "int4", ["some text"], 32, True, 4, force=True
    )
    assert [(t["block_size"], t["lm_head"]) for t in report["plans_tried"]] == [(32, True)]
    assert search.weight_only_rungs(16, False) == [(16, False)]


def test_the_ladder_from_a_wide_block_halves_it_before_it_gives_up_the_quantised_head():
    from trtpipe.optimize import search

    assert search.weight_only_rungs(128, True) == [
        (128, True),
        (64, True),
        (32, True),
        (128, False),
        (64, False),
        (32, False),
        (16, False),
    ]
    assert search.weight_only_rungs(256, False)[0] == (256, False)
    assert search.weight_only_rungs(256, False)[-1] == (16, False)
    assert len(set(search.weight_only_rungs(256, True))) == len(search.weight_only_rungs(256, True))


def _matmuls(*widths: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "x"
    for index, (k, n) in enumerate(zip(widths, widths[1:])):
        inits.append(numpy_helper.from_array(np.zeros((k, n), np.float32), f"w{index}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{index}"], [f"y{index}"]))
        x = f"y{index}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", widths[0]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["M", widths[-1]])],
        inits,
    )
    return helper.make_model(graph)


def test_the_default_block_is_wide_but_never_wider_than_the_narrowest_weight():
    from trtpipe.optimize.weight_only import DEFAULT_BLOCK, default_block

    gpt2 = _matmuls(768, 3072, 768)  # 124M's widths
    assert default_block(gpt2, "int4") == DEFAULT_BLOCK["int4"] == 128
    assert default_block(gpt2, "int8-wo") == DEFAULT_BLOCK["int8-wo"] == 256
    assert default_block(_matmuls(256, 1024, 256), "int8-wo") == 256
    assert default_block(_matmuls(768, 96, 768), "int8-wo") == 64  # K = 96: the power of two below it
    assert default_block(_matmuls(32, 128, 32), "int4") == 32  # tiny-gpt2 keeps the old block
    assert default_block(_matmuls(8, 8), "int4") == 16  # never below the kernel's smallest


def test_optimize_without_a_block_size_starts_from_the_default_block(make_bundle, tmp_path):
    from trtpipe.optimize.weight_only import default_block

    path = shutil.copytree(
        make_bundle("tiny-gpt2", "generate"), tmp_path / "bundle"
    )  # the shared one stays as is
    entry = optimize_bundle(path, "int8-wo", force=True)
    fp32 = onnx.load(str(Bundle.load(path).model_path("fp32")))
    assert entry["report"]["block_size"] == default_block(fp32, "int8-wo") == 32
    with pytest.raises(UserError, match="--block-size"):
        optimize_bundle(path, "int4", force=True, block_size=48)


def test_headroom_asks_for_part_of_the_allowed_error_to_spare():
    from trtpipe.optimize.gate import GateResult

    result = GateResult("int4", {"next_token_top1": 0.982}, {"next_token_top1": (">=", 0.97)})
    assert result.passed and result.passed_with_headroom(1 / 3) and not result.passed_with_headroom(1 / 2)
    zero = GateResult("fp16", {"logits_outside_tolerance": 0.0}, {"logits_outside_tolerance": ("<=", 0.0)})
    assert zero.passed_with_headroom(1 / 2)


def test_nodes_sharing_a_weight_get_one_scheme_the_safest():
    from trtpipe.optimize.int8 import consistent_per_weight

    weight_of = {"l1.q": "Wq", "l2.q": "Wq", "l3.q": "Wq", "l1.ffn": "Wf", "l2.ffn": "Wf", "head": "Wh"}
    plan = {
        "l1.q": "per-tensor",
        "l2.q": "per-channel",
        "l3.q": "per-tensor",
        "l1.ffn": "per-tensor",
        "l2.ffn": "fp32",
        "head": "per-tensor",
    }
    assert consistent_per_weight(plan, weight_of) == {
        "l1.q": "per-channel",
        "l2.q": "per-channel",
        "l3.q": "per-channel",
        "l1.ffn": "fp32",
        "l2.ffn": "fp32",
        "head": "per-tensor",
    }


def test_mixed_schemes_on_a_shared_weight_would_leave_it_fp32_and_the_plan_prevents_it(make_bundle):
    """ORT's quantizer with two schemes for one shared weight leaves DequantizeLinear + fp32 MatMul behind (what
    made int8 ALBERT-base 1.14×); a per-weight consistent plan quantises every layer."""
    from trtpipe.optimize.int8 import apply_dynamic, consistent_per_weight, weight_matmuls

    bundle = Bundle.load(make_bundle("tiny-albert", "classify"))
    model = onnx.load(str(bundle.model_path("fp32")))
    nodes = weight_matmuls(model)
    first_use = {}
    for n in nodes:
        first_use.setdefault(n.input[1], n.name)
    # layer 1 per-channel, layers 2..L per-tensor: each shared weight is asked for with two schemes
    mixed = {n.name: ("per-channel" if first_use[n.input[1]] == n.name else "per-tensor") for n in nodes}
    ops = Counter(n.op_type for n in apply_dynamic(model, mixed).graph.node)
    assert ops["DequantizeLinear"] > 0 and ops["MatMulInteger"] < len(nodes)  # the hazard is real
    plan = consistent_per_weight(mixed, {n.name: n.input[1] for n in nodes})
    ops = Counter(n.op_type for n in apply_dynamic(model, plan).graph.node)
    assert ops["DequantizeLinear"] == 0 and ops["MatMulInteger"] == len(nodes)


def test_qdq_keeps_a_shared_weight_fp32_for_all_its_nodes_or_none(make_bundle):
    from trtpipe.optimize.int8 import quantize_qdq_gated, weight_matmuls
    from trtpipe.optimize.variants import calibration_feeds, read_texts

    bundle = Bundle.load(make_bundle("tiny-albert", "classify"))
    source = bundle.model_path("fp32")
    feeds = calibration_feeds(bundle, read_texts(None, 8, "train"), batch=4)
    model, report = quantize_qdq_gated(source, feeds, "minmax", lambda candidate: False)  # walk every rung
    weight_of = {n.name: n.input[1] for n in weight_matmuls(onnx.load(str(source)), gemm=True)}
    excluded = set(report["fp32_nodes"])
    assert excluded, "the last rung keeps some MatMuls fp32"
    for node in excluded:
        assert {n for n, w in weight_of.items() if w == weight_of[node]} <= excluded
    names = {i.name for i in model.graph.initializer}
    for weight in {
        weight_of[n] for n in excluded
    }:  # kept fp32, and not also stored quantised for other nodes
        assert weight in names and not any(n.startswith(weight) and n != weight for n in names), weight


def test_a_refused_variant_is_recorded_shown_and_not_redone_until_asked(make_bundle, tmp_path, monkeypatch):
    from trtpipe.optimize import defaults, gate

    out = tmp_path / "bundles"
    out.mkdir()
    path = out / "real"
    _copy_as_real_weights(make_bundle("tiny-bert", "classify"), path)
    monkeypatch.setitem(defaults.OPTIMIZE, "classify", ["int8"])
    real_thresholds = gate.thresholds
    monkeypatch.setattr(gate, "thresholds", lambda task, precision: {"label_agreement": (">=", 1.01)})
    with pytest.raises(CheckFailed, match="fails its accuracy gate"):
        optimize_bundle(path, "int8")
    bundle = Bundle.load(path)
    assert "int8" not in bundle.variants and not list(path.glob("model.int8*"))
    refused = bundle.manifest["refused"]["int8"]
    assert (
        refused["gate"]["verdict"] == "fail" and refused["fp32_sha256"] == bundle.variants["fp32"]["sha256"]
    )
    shown = " ".join(CliRunner().invoke(app, ["inspect", str(path)]).output.split())
    assert "refused" in shown and "label_agreement" in shown
    assert defaults.optimize_defaults(out) == {"written": [], "refused": [], "skipped": ["real int8"]}
    monkeypatch.setattr(gate, "thresholds", real_thresholds)
    assert defaults.optimize_defaults(out, retry_refused=True)["written"] == ["real int8"]
    assert "int8" not in Bundle.load(path).manifest.get("refused", {})  # a pass clears the old refusal


def test_expected_agreement_sees_near_misses_that_a_flip_count_does_not(make_bundle):
    from trtpipe.optimize.gate import evaluate, expected_agreement, margins, search_thresholds

    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(64, 8))
    small, large = (fp32 + rng.normal(scale=s, size=fp32.shape) for s in (0.002, 0.03))
    for candidate in (small, large):  # neither flips one of 64 labels: a flip count cannot tell them apart
        assert (candidate.argmax(-1) == fp32.argmax(-1)).all()
    margin, change = margins(fp32, small)
    assert (margin >= 0).all() and np.allclose(margin, np.sort(fp32, -1)[:, -1] - np.sort(fp32, -1)[:, -2])
    near = expected_agreement(margin, change)
    far = expected_agreement(*margins(fp32, large))
    assert near > 0.9999 and far < 0.995  # 15× the error spread: below the search's line
    # a vocabulary-sized row takes the same path without a sort
    wide = rng.normal(size=(4, 1000))
    assert np.allclose(margins(wide, wide)[0], np.sort(wide, -1)[:, -1] - np.sort(wide, -1)[:, -2])
    assert expected_agreement(*margins(fp32, fp32)) == 1.0
    # the search asks for it with half the allowed error to spare; the held-out gate keeps counting flips
    assert search_thresholds("classify", "int8")["expected_agreement"] == (">=", pytest.approx(0.995))
    assert search_thresholds("ner", "int8-qdq")["expected_agreement"] == (">=", pytest.approx(0.99))
    assert "expected_agreement" not in search_thresholds("embed", "int8")
    assert "expected_agreement" not in search_thresholds("generate", "int8")
    assert "expected_agreement" not in search_thresholds("classify", "fp16")
    bundle = Bundle.load(make_bundle("tiny-bert", "classify"))
    texts = ["Return the socket.", "Open the file and read it.", "Sort the list in place."]
    searched = evaluate(bundle, bundle.model_path("fp32"), "int8", texts, search=True)
    held_out = evaluate(bundle, bundle.model_path("fp32"), "int8", texts)
    assert searched.metrics["expected_agreement"] == 1.0 and searched.passed
    assert "expected_agreement" in searched.thresholds and "expected_agreement" not in held_out.thresholds


def test_climb_tries_per_channel_then_fp32_most_sensitive_first_up_to_half_the_weights():
    from trtpipe.optimize.int8_plan import climb

    errors = {
        "emb": {"per-tensor": 0.010, "per-channel": 0.009},
        "q": {"per-tensor": 0.001, "per-channel": 0.001},
        "ffn": {"per-tensor": 0.002, "per-channel": 0.0015},
        "v": {"per-tensor": 0.0005, "per-channel": 0.0002},
    }
    plans = climb(errors)
    pt, pc = "per-tensor", "per-channel"
    assert plans == [
        {"emb": pt, "q": pt, "ffn": pt, "v": pt},
        {"emb": pc, "q": pt, "ffn": pt, "v": pt},
        {"emb": pc, "q": pt, "ffn": pc, "v": pt},
        {"emb": pc, "q": pc, "ffn": pc, "v": pc},
        {"emb": "fp32", "q": pc, "ffn": pc, "v": pc},
        {"emb": "fp32", "q": pc, "ffn": "fp32", "v": pc},  # half the weights: the last rung
    ]
    many = {f"w{i}": {"per-tensor": float(i), "per-channel": float(i)} for i in range(40)}
    steps = climb(many)
    assert len(steps) <= 14  # 1, 2, 4, … weights a step: a handful of steps for many weights
    assert sum(v == "fp32" for v in steps[-1].values()) == 20
    assert steps[1] == {w: "per-channel" if w == "w39" else "per-tensor" for w in many}


def test_shared_weights_are_measured_and_the_one_carrying_the_error_goes_fp32_first(make_bundle):
    """A tiny ALBERT's shared query weight gets one outlier row, which wrecks its int8 rounding per tensor and per
    channel alike: the search measures each shared weight, finds it first, tries per-channel (in vain), and stops at
    the first fp32 step that passes — one or two weights, every layer's query among them, one fp32 copy. The outlier
    also sharpens the attention, so the next weight's rounding (the embedding mapping) can count too; measured on
    this bundle with u8 weights: drift 0.29 all per-channel, 0.26 with only the query fp32, 0.063 with both."""
    from trtpipe.optimize.int8_plan import _outputs, drift, quantize_dynamic_gated, weight_groups
    from trtpipe.optimize.variants import calibration_feeds, read_texts

    bundle = Bundle.load(make_bundle("tiny-albert", "classify"))
    model = onnx.load(str(bundle.model_path("fp32")))
    groups = weight_groups(model)
    target = next(w for w, nodes in groups.items() if "/query/" in nodes[0])
    assert len(groups[target]) == bundle.model["num_layers"] > 1  # every layer reads it
    init = next(i for i in model.graph.initializer if i.name == target)
    w = numpy_helper.to_array(init).copy()
    w[0, :] = 300 * np.abs(w).max() * np.sign(w[0, :])
    init.CopyFrom(numpy_helper.from_array(w, target))
    feeds = calibration_feeds(bundle, read_texts(None, 8, "train"), batch=4)
    reference = _outputs(model, feeds)
    passes = lambda q: drift(reference, _outputs(q, feeds)) < 0.08  # noqa: E731
    quantized, plan, report = quantize_dynamic_gated(model, feeds, passes, measure=True)
    assert report["errors_from"] == "measured" and report["errors_top"][0][0] == groups[target][0]
    fp32 = {n for n, scheme in plan.items() if scheme == "fp32"}
    fp32_weights = [w for w, nodes in groups.items() if set(nodes) <= fp32]
    assert target in fp32_weights and len(fp32_weights) <= 2, report["plans_tried"]
    assert fp32 == {
        n for w in fp32_weights for n in groups[w]
    }  # a shared weight is fp32 in every layer or none
    tried = report["plans_tried"]
    assert [t["passed_calibration"] for t in tried] == [False] * (len(tried) - 1) + [True]
    assert any(t["per-channel"] == len(plan) for t in tried[:-1])  # every weight per-channel did not pass
    assert report["roles"][groups[target][0]] == "fp32"
    assert sum(i.name == target for i in quantized.graph.initializer) == 1  # the shared fp32 weight: one copy


def test_plan_from_a_scheme_quantises_every_weight_with_it_without_a_search(make_bundle, copy_bundle):
    """`--plan-from per-channel`: no search, every weight MatMul per channel (the GPT-2 twin too), still gated."""
    from trtpipe.optimize.int8 import weight_matmuls

    path = copy_bundle(make_bundle("tiny-gpt2", "generate"))
    result = CliRunner().invoke(
        app, ["optimize", str(path), "--precision", "int8", "--plan-from", "per-channel", "--force"]
    )
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(path)
    entry = bundle.variants["int8"]
    assert entry["report"]["plan_from"] == "--plan-from per-channel"
    assert entry["report"]["activations"].startswith(
        "per row"
    )  # a decoder: batched rows never share rounding
    assert set(entry["report"]["roles"].values()) == {"per-channel"}
    assert [t["passed_calibration"] for t in entry["report"]["plans_tried"]] == [None]  # no search
    assert entry["gate"]["metrics"]  # measured all the same
    for variant in ("int8", "int8.kv-inplace"):
        model = onnx.load(str(bundle.model_path(variant)))
        ops = Counter(n.op_type for n in model.graph.node)
        assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] > 0 and not weight_matmuls(model)
    with pytest.raises(UserError, match="carries over int8 plans only"):
        optimize_bundle(path, "int4", plan_from="per-channel")


def test_a_plan_carries_over_by_weight_role_and_not_across_architectures(make_bundle, copy_bundle):
    from trtpipe.optimize.int8_plan import roles

    source = copy_bundle(make_bundle("tiny-albert", "classify"))
    optimize_bundle(source, "int8", force=True)
    recorded = Bundle.load(source).variants["int8"]["report"]["roles"]
    target = copy_bundle(make_bundle("albert-base", "classify"))
    result = CliRunner().invoke(
        app, ["optimize", str(target), "--precision", "int8", "--plan-from", str(source), "--force"]
    )
    assert result.exit_code == 0, result.output
    entry = Bundle.load(target).variants["int8"]
    assert entry["report"]["plan_from"] == str(source) and entry["report"]["roles"] == recorded
    assert [t["passed_calibration"] for t in entry["report"]["plans_tried"]] == [None]  # no search
    base = onnx.load(str(Bundle.load(target).model_path("fp32")))
    assert set(roles(base).values()) == set(recorded)  # 12 layers read the same 7 weights as 2 layers do
    other = copy_bundle(make_bundle("tiny-bert", "classify"))
    with pytest.raises(UserError, match="has no scheme for"):
        optimize_bundle(other, "int8", plan_from=source)
    with pytest.raises(UserError, match="carries over int8 plans only"):
        optimize_bundle(other, "int4", plan_from=source)
    with pytest.raises(UserError, match="records no int8 plan"):
        optimize_bundle(other, "int8", plan_from=make_bundle("tiny-bert", "embed"))


def test_a_search_goes_on_past_a_plan_the_held_out_gate_refuses(tmp_path, monkeypatch):
    """calibration_gate(held_out=...): a candidate must pass calibration (search thresholds) and then the held-out
    gate the variant is recorded with; held-out is not read when calibration already refuses; both verdicts are in
    passes.last, which the searches record; HeldOutGate keeps its verdict for the candidate it judged; no temp file
    is left beside the bundle."""
    import types

    import onnx
    from onnx import TensorProto, helper

    from trtpipe.optimize import gate, search

    verdict = {"held_out": False}
    calls = []

    class Result:
        def __init__(self, ok):
            self.passed = ok

        def passed_with_headroom(self, fraction):
            return self.passed

    def evaluate(bundle, path, precision, texts, search=False, backend="ort-cpu"):
        assert path.exists() and backend == "ort-cpu"
        calls.append((list(texts), search))
        return Result(texts[0] == "cal" if search else verdict["held_out"])

    monkeypatch.setattr(search.gate, "evaluate", evaluate)
    bundle = types.SimpleNamespace(path=tmp_path, kind=types.SimpleNamespace(qdq_calibration_texts=2))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [x],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    held = search.HeldOutGate(bundle, "int8", ["held"])
    passes = search.calibration_gate(bundle, "int8", ["cal", "cal", "more"], held_out=held)
    assert passes(model) is False and passes.last == {"passed_calibration": True, "passed_held_out": False}
    assert calls == [(["cal", "cal"], True), (["held"], False)]
    # the verdict is kept with the candidate it judged: the plan a search returns is not gated twice
    assert held.result_for(model).passed is False and held.result_for(onnx.ModelProto()) is None
    verdict["held_out"] = True
    assert passes(model) is True and gate.verdicts(passes, True)["passed_held_out"] is True
    assert held.result_for(model).passed is True
    calls.clear()
    refusing = search.calibration_gate(
        bundle, "int8", ["bad"], held_out=search.HeldOutGate(bundle, "int8", ["held"])
    )
    assert refusing(model) is False and refusing.last == {"passed_calibration": False} and len(calls) == 1
    alone = search.calibration_gate(bundle, "int8", ["cal"])
    assert alone(model) is True and alone.last == {"passed_calibration": True}
    assert gate.verdicts(lambda m: True, None) == {"passed_calibration": None}
    assert not list(tmp_path.iterdir()) and isinstance(model, onnx.ModelProto)


def test_int8_s8_weights_are_recorded_and_refused_where_they_would_saturate(
    make_bundle, tmp_path, monkeypatch
):
    """--int8-weights s8: the weights are s8 (u8 by default), the entry names the CPU it needs, and a CPU without
    VNNI refuses to build it and to run it, in one line naming the fix; only dynamic int8 takes the option."""
    from trtpipe.runtime import cpu

    default, path = tmp_path / "u8", tmp_path / "s8"
    shutil.copytree(make_bundle("tiny-bert", "classify"), default)
    shutil.copytree(make_bundle("tiny-bert", "classify"), path)
    entry = optimize_bundle(default, "int8", force=True)
    assert entry["report"]["weights"] == "u8" and "cpu_needs" not in entry

    monkeypatch.setattr(cpu, "missing", lambda needs: [])  # a VNNI CPU, whatever runs the tests
    entry = optimize_bundle(path, "int8", force=True, int8_weights="s8")
    assert entry["report"]["weights"] == "s8" and entry["cpu_needs"] == ["vnni"]
    model = onnx.load(str(Bundle.load(path).model_path("int8")))
    kinds = Counter(i.data_type for i in model.graph.initializer if i.name.endswith("_quantized"))
    assert kinds and set(kinds) == {onnx.TensorProto.INT8}
    assert open_session(path, variant="int8").run  # it opens here

    monkeypatch.setattr(cpu, "missing", lambda needs: list(needs))  # an AVX2-only CPU
    with pytest.raises(UserError, match=r"VNNI .*--precision int8 --overwrite` \(u8 weights\)"):
        open_session(path, variant="int8")
    with pytest.raises(UserError, match="needs a CPU with VNNI"):
        optimize_bundle(path, "int8", overwrite=True, int8_weights="s8")
    with pytest.raises(UserError, match="is for --precision int8"):
        optimize_bundle(path, "int4", int8_weights="s8")
    with pytest.raises(UserError, match="--int8-weights must be u8 or s8"):
        optimize_bundle(path, "int8", overwrite=True, int8_weights="u4")
    open_session(default, variant="int8")  # u8 weights run anywhere


def test_cpu_missing_reads_vnni_on_x86_only(monkeypatch):
    from trtpipe.runtime import cpu

    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "fma"})
    assert cpu.missing(["vnni"]) == ["vnni"] and cpu.missing([]) == []
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "avx_vnni"})
    assert cpu.missing(["vnni"]) == []
    monkeypatch.setattr(cpu, "cpu_flags", lambda: None)  # flags unknown: not refused
    assert cpu.missing(["vnni"]) == []
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")  # 32-bit accumulation: nothing saturates
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"asimd"})
    assert cpu.missing(["vnni"]) == []
