"""Where a batched GPT-2 decode step's time goes, by rows and by op, and which CPU kernel scales with rows.

Three measurements behind `bench/batch_scaling.py` (issue 20, item 3: "in-flight batching that scales"):
- `time_kernels`: one GPT-2 layer's four weight matrices (768×2304, 768×768, 768×3072, 3072×768), stacked, run at
  M = 1 … 64 rows by every weight kernel our variants use — fp32 MatMul, MatMulNBits int4 / int8 (int8 compute,
  accuracy level 4) and MatMulInteger (GPT-2's dynamic int8: u8 weights per channel, u8 activations per row),
  quantised by the same functions `optimize` uses;
- `step_profile`: one in-place decode step of a BatchEngine at 1 … 16 rows, and one prefill chunk;
- `op_split`: that step under ONNX Runtime's profiler, its KV buffers bound in place as the runtime binds them,
  split into weight MatMuls, attention and the rest.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LAYER_SHAPES = (
    (768, 2304),
    (768, 768),
    (768, 3072),
    (3072, 768),
)  # GPT-2 124M: c_attn, attn c_proj, c_fc, c_proj
KERNEL_TEXT = {
    "fp32": "MatMul (fp32)",
    "int8": "MatMulInteger (GPT-2's int8 variant: u8 weights per channel, u8 activations per row)",
    "int8 s8": "MatMulInteger with s8 weights per channel (`optimize --int8-weights s8`: VNNI's u8 × s8), u8 activations per row",
    "int8-wo": "MatMulNBits 8-bit (int8-wo: block 32, int8 compute)",
    "int4": "MatMulNBits 4-bit (int4: block 32, int8 compute)",
}
WEIGHT_OPS = {
    "MatMul",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",  # ORT's fusion of MatMulInteger + Cast + scale Muls
    "DynamicQuantizeLinear",
    "Gemm",
}
ATTENTION_OPS = {"GroupQueryAttention", "Attention", "MultiHeadAttention"}


def layer_stack(layers: int = 2, seed: int = 0, head: int = 0) -> onnx.ModelProto:
    """`layers` copies of one GPT-2 layer's weight MatMuls: x → [attn, attn-out, fc → proj]; proj feeds the next;
    head > 0 adds the LM head (768 × head) on the last one."""
    rng = np.random.default_rng(seed)
    nodes, inits, outputs = [], [], []
    x = "x"
    for layer in range(layers):
        for name, (k, n) in zip(("attn", "o", "fc", "proj"), LAYER_SHAPES):
            w = f"{name}{layer}"
            inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), w))
        nodes += [
            helper.make_node("MatMul", [x, f"attn{layer}"], [f"qkv{layer}"], name=f"attn{layer}/MatMul"),
            helper.make_node("MatMul", [x, f"o{layer}"], [f"out{layer}"], name=f"o{layer}/MatMul"),
            helper.make_node("MatMul", [x, f"fc{layer}"], [f"h{layer}"], name=f"fc{layer}/MatMul"),
            helper.make_node(
                "MatMul", [f"h{layer}", f"proj{layer}"], [f"y{layer}"], name=f"proj{layer}/MatMul"
            ),
        ]
        outputs += [f"qkv{layer}", f"out{layer}"]
        x = f"y{layer}"
    widths = {f"qkv{i}": 2304 for i in range(layers)} | {f"out{i}": 768 for i in range(layers)} | {x: 768}
    if head:
        inits.append(
            numpy_helper.from_array((rng.standard_normal((768, head)) * 0.02).astype(np.float32), "head")
        )
        nodes.append(helper.make_node("MatMul", [x, "head"], ["logits"], name="head/MatMul"))
        outputs.append(x)
        x, widths["logits"] = "logits", head
    outputs.append(x)
    graph = helper.make_graph(
        nodes,
        "gpt2-layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 768])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["M", widths[o]]) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def kernel_models(layers: int = 2, head: int = 0) -> dict[str, onnx.ModelProto]:
    """The stack as each variant quantises it (the functions `optimize` calls; the LM head too, as GPT-2's
    variants quantise it)."""
    from ..optimize.int8 import apply_dynamic, weight_matmuls
    from ..optimize.weight_only import quantize_weight_only

    base = layer_stack(layers, head=head)
    copy = lambda: onnx.ModelProto.FromString(base.SerializeToString())  # noqa: E731
    return {
        "fp32": base,
        "int8": apply_dynamic(copy(), {n.name: "per-channel" for n in weight_matmuls(copy())}, per_row=True),
        "int8 s8": apply_dynamic(
            copy(), {n.name: "per-channel" for n in weight_matmuls(copy())}, per_row=True, weights="s8"
        ),
        "int8-wo": quantize_weight_only(copy(), 8, 32, lm_head=True, accuracy_level=4)[0],
        "int4": quantize_weight_only(copy(), 4, 32, lm_head=True, accuracy_level=4)[0],
    }


def cpu_session(model: onnx.ModelProto | str, threads: int, profile: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def time_kernels(
    models: dict[str, onnx.ModelProto], rows: tuple[int, ...], threads: int, rounds: int = 3, iters: int = 10
) -> dict[str, dict[int, float]]:
    """Median ms of one run of the stack per kernel and M, rounds interleaved across kernels."""
    sessions = {name: cpu_session(model, threads) for name, model in models.items()}
    rng = np.random.default_rng(1)
    inputs = {m: rng.standard_normal((m, 768)).astype(np.float32) for m in rows}
    samples: dict = {name: {m: [] for m in rows} for name in models}
    for session in sessions.values():  # every kernel and shape prepared before any is timed
        for m in rows:
            for _ in range(3):
                session.run(None, {"x": inputs[m]})
    for _ in range(rounds):
        for name, session in sessions.items():
            for m in rows:
                feed = {"x": inputs[m]}
                session.run(None, feed)
                for _ in range(iters):
                    started = time.perf_counter()
                    session.run(None, feed)
                    samples[name][m].append(time.perf_counter() - started)
    return {name: {m: float(np.median(v)) * 1e3 for m, v in per.items()} for name, per in samples.items()}


def step_profile(
    engine, rows: tuple[int, ...], context: int = 160, chunk: int = 64, repeat: int = 5, reduce=min
) -> dict:
    """ms of one decode step at each row count (every row `context` tokens long), and of one prefill chunk
    of `chunk` tokens: `reduce` (default: the best) of `repeat` calls after a warm-up. The engine's cache must hold
    max(rows) slots."""
    from .stats import timed_calls

    runner, cache = engine.runner, engine.cache
    vocab = runner.vocab
    prompt = [
        int(t) for t in np.random.default_rng(0).integers(min(100, vocab // 2), min(20000, vocab), context)
    ]
    token = min(318, vocab - 1)
    for row in range(max(rows)):
        for past in range(0, context, chunk):
            runner.prefill_row(prompt[past : past + chunk], cache, row, past, engine.prefill_logits)

    def ms(fn) -> float:
        return float(reduce(timed_calls(fn, repeat))) * 1e3

    decode = {}
    # most rows first: a shared-width cache (slots.py) keeps only the rows of its last step
    for count in sorted(rows, reverse=True):
        tokens = np.full(count, token, dtype=np.int64)
        lengths = np.full(count, context, dtype=np.int64)
        decode[count] = ms(lambda t=tokens, n=lengths: runner.decode(t, n, cache, None))
    prefill = ms(lambda: runner.prefill_row(prompt[:chunk], cache, 0, 0, engine.prefill_logits))
    return {"decode_ms": decode, "prefill_ms": prefill, "chunk": chunk, "context": context}


def op_split(model_file: str | Path, rows: int, threads: int, context: int = 160, runs: int = 6) -> dict:
    """ms per decode step by op kind (ONNX Runtime's profiler): `rows` rows of `context` cached tokens, the KV
    buffers bound as both past and present (in place, as the runtime binds them)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = cpu_session(str(model_file), threads, profile=str(Path(tmp) / "profile"))
        names = [i.name for i in session.get_inputs()]
        capacity = context + 64
        io = session.io_binding()
        buffers = []  # alive until the runs end: the binding holds their addresses
        for spec in session.get_inputs():
            if spec.name.startswith("past_key_values."):
                heads, head_dim = spec.shape[1], spec.shape[3]
                buffer = np.zeros((rows, heads, capacity, head_dim), dtype=np.float32)
                buffers.append(buffer)
                present = spec.name.replace("past_key_values.", "present.")
                io.bind_input(spec.name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
                io.bind_output(present, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
        vocab = next(o for o in session.get_outputs() if o.name == "logits").shape[-1]
        token = min(318, vocab - 1)
        logits = np.empty((rows, 1, vocab), dtype=np.float32)
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        feeds = {
            "input_ids": np.full((rows, 1), token, dtype=np.int64),
            "position_ids": np.full((rows, 1), context, dtype=np.int64),
            "seqlens_k": np.full(rows, context, dtype=np.int32),
            "total_sequence_length": np.array(context + 1, dtype=np.int32),
        }
        for name, value in feeds.items():
            if name in names:
                io.bind_cpu_input(name, value)
        session.run_with_iobinding(io)  # warm-up, profiled too: subtracted below by counting runs
        for _ in range(runs):
            session.run_with_iobinding(io)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: Counter = Counter()
    count = 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            count += 1
        elif event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    count = max(count, 1)
    per_run = {op: us / count / 1e3 for op, us in by_op.items()}
    kinds = {"weight MatMuls": 0.0, "attention": 0.0, "rest": 0.0}
    for op, ms in per_run.items():
        kinds["weight MatMuls" if op in WEIGHT_OPS else "attention" if op in ATTENTION_OPS else "rest"] += ms
    return {"rows": rows, "kinds": kinds, "ops": dict(sorted(per_run.items(), key=lambda kv: -kv[1]))}


def scaling(many: float, one: float) -> float:
    """How many times the cost of one row a step of many rows costs (a ratio of ms)."""
    return many / one if one else float("nan")
