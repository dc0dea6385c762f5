"""OpenVINO's PagedAttention on trtpipe's own GPT-2 bundle: one engine call a step, the KV cache in place.

bench/weight_kernels.py found OpenVINO's int4 kernel the faster one from four rows on; bench/split_step.py found
that reaching it through 25 engine calls a step gives the gain back. This probe asks OpenVINO for the whole step. It
reads the bundle's int4 interop graph (`model.int4.onnx`), puts a ScaledDotProductAttention where each layer's
attention is (the explicit MatMul/Softmax of the export), makes the past K/V OpenVINO state the way optimum-intel's
exports have it, and runs OpenVINO's own `paged_attention_transformation`. The result is the model
openvino-genai's ContinuousBatchingPipeline runs: tokens of every sequence in one flat batch, the cache in blocks
the caller owns and OpenVINO writes in place, prefill and decoding in the same call. It also gathers each
sequence's last token before the LM head (a prompt's other positions need no logits).

Measured, GPT-2 124M int4 (random weights: speed only), in one process:
- one decode step at R rows (context 64) against ONNX Runtime's in-place graph on its own cache;
- a burst of 8 prompts of 32 tokens in one call;
- whether a row's logits depend on the rows beside it (decoded alone against among R);
- the logits against ONNX Runtime's;
- the serve_load mix through BatchEngine at 1 and 16 in flight, in place against `backend="ov", paged=True`.

Not part of `make bench` (a probe of a design trtpipe does not ship yet). Writes the `paged-step` section of
docs/benchmarks.md.

    python bench/paged_step.py          # ≈ 3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROWS = (1, 4, 8, 16)
CONTEXT = 64


def paged_model(path: str, ov):
    """OpenVINO's reading of the interop graph at `path`, turned into a PagedAttention model."""
    import openvino._offline_transformations as offline
    from openvino import opset6
    from openvino import opset13 as ops
    from openvino.op import assign
    from openvino.op.util import Variable, VariableInfo

    model = ov.Core().read_model(path)
    tensors = {
        n: o
        for op in model.get_ordered_ops()
        if op.get_type_name() != "Result"
        for o in op.outputs()
        for n in o.get_names()
    }
    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    layers = sum(1 for n in params if n.startswith("past_key_values.") and n.endswith(".key"))
    shape = params["past_key_values.0.key"].get_partial_shape()
    heads, head_dim = shape[1].get_length(), shape[3].get_length()
    zero_mask = ops.constant(np.zeros((1, 1, 1, 1), np.float32))
    for layer in range(layers):
        k, v = tensors[f"present.{layer}.key"], tensors[f"present.{layer}.value"]
        k_t = next(i.get_node() for i in k.get_target_inputs() if i.get_node().get_type_name() == "Transpose")
        q_k = next(iter(k_t.output(0).get_target_inputs())).get_node()  # MatMul(Q, Kᵀ)
        p_v = next(i.get_node() for i in v.get_target_inputs() if i.get_node().get_type_name() == "MatMul")
        # the mask input is only there for the pattern: PagedAttention is causal by itself
        sdpa = ops.scaled_dot_product_attention(q_k.input_value(0), k, v, zero_mask, causal=False)
        for port in list(p_v.output(0).get_target_inputs()):
            port.replace_source_output(sdpa.output(0))
    # past K/V as state: ReadValue (initialised empty) → Gather(beam_idx) → Concat; Assign of the Concat
    beam = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam.output(0).set_names({"beam_idx"})
    batch = ops.gather(
        ops.shape_of(params["input_ids"]), ops.constant(np.array([0], np.int64)), ops.constant(0)
    )
    empty = ops.broadcast(
        ops.constant(np.float32(0)),
        ops.concat([batch, ops.constant(np.array([heads, 0, head_dim], np.int64))], 0),
    )
    results = {
        n: r for r in model.get_results() for n in r.output(0).get_names() | r.input_value(0).get_names()
    }
    sinks = []
    for layer in range(layers):
        for kind in ("key", "value"):
            name = f"past_key_values.{layer}.{kind}"
            info = VariableInfo()
            info.variable_id, info.data_type = name, ov.Type.f32
            info.data_shape = ov.PartialShape([-1, heads, -1, head_dim])
            variable = Variable(info)
            past = ops.gather(opset6.read_value(empty, variable), beam, ops.constant(0))
            for port in list(params[name].output(0).get_target_inputs()):
                port.replace_source_output(past.output(0))
            result = results[f"present.{layer}.{kind}"]
            sinks.append(assign(result.input_value(0).get_node(), variable))
            model.remove_result(result)
            model.remove_parameter(params[name])
    model.add_sinks(sinks)
    model.add_parameters([beam])
    model.validate_nodes_and_infer_types()
    offline.paged_attention_transformation(model)
    # logits for each sequence's last token only
    inputs = {i.get_any_name(): i for i in model.inputs}
    begins = inputs["subsequence_begins"]
    last = ops.subtract(
        ops.slice(begins, ops.constant([1]), ops.constant([np.iinfo(np.int32).max]), ops.constant([1])),
        ops.constant(np.int32(1)),
    )
    head = next(
        r for r in model.get_results() if "logits" in r.output(0).get_names() | r.input_value(0).get_names()
    )
    node = head.input_value(0).get_node()
    while node.get_type_name() != "MatMul":
        node = node.input_value(0).get_node()
    node.input(0).replace_source_output(ops.gather(node.input_value(0), last, ops.constant(0)).output(0))
    model.validate_nodes_and_infer_types()
    return model, layers


class Paged:
    """The compiled model, its caches (every sequence owns `per_sequence` blocks) and one call of many sequences."""

    def __init__(
        self, model, layers: int, threads: int, group: int | None, sequences: int, capacity: int, ov
    ):
        from trtpipe.runtime.ov import compile_config

        config = {**compile_config(threads, group=group), "KV_CACHE_PRECISION": "f32"}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input("key_cache.0").get_partial_shape()
        self.block = shape[2].get_length()
        self.per_sequence = -(-capacity // self.block)
        blocks = sequences * self.per_sequence
        for layer in range(layers):
            for kind in ("key", "value"):
                name = f"{kind}_cache.{layer}"
                cache = ov.Shape([blocks, shape[1].get_length(), self.block, shape[3].get_length()])
                self.request.set_tensor(name, ov.Tensor(self.compiled.input(name).get_element_type(), cache))
        self.ov = ov

    def run(self, pieces: list[tuple[list[int], int, int]]) -> np.ndarray:
        """Every piece (ids, sequence, past) in one call; the logits of each piece's last token, [pieces, V]."""
        ids = np.concatenate([np.asarray(p[0], np.int64) for p in pieces])
        positions = np.concatenate([np.arange(past, past + len(t), dtype=np.int64) for t, _, past in pieces])
        begins = np.concatenate([[0], np.cumsum([len(p[0]) for p in pieces])]).astype(np.int32)
        tables = [
            np.arange(s * self.per_sequence, (s + 1) * self.per_sequence, dtype=np.int32)
            for _, s, _ in pieces
        ]
        feeds = {
            "input_ids": ids,
            "position_ids": positions,
            "past_lens": np.array([past for _, _, past in pieces], np.int32),
            "subsequence_begins": begins,
            "block_indices": np.concatenate(tables),
            "block_indices_begins": (np.arange(len(pieces) + 1) * self.per_sequence).astype(np.int32),
            "max_context_len": np.array(max(past + len(t) for t, _, past in pieces), np.int32),
        }
        for name, value in feeds.items():
            self.request.set_tensor(name, self.ov.Tensor(value))
        self.request.infer()
        return self.request.get_tensor("logits").data.reshape(len(pieces), -1).copy()


def serving(path, count: int, threads: int) -> list[str]:
    """The serve_load mix (the vLLM peer's requests) through BatchEngine int4 at 1 and 16 in flight: in place on ONNX
    Runtime (its defaults) and `backend="ov", paged=True`, two interleaved rounds, a fresh engine each (the other one
    closed, though both engines' libraries stay loaded in this one process)."""
    from trtpipe.benchmark.vllm_peer import mix_requests, ours_closed_loop, summarize
    from trtpipe.runtime import BatchEngine, Bundle

    requests = mix_requests(Bundle.load(path), count)
    made = {
        "in place (ONNX Runtime)": lambda: BatchEngine(path, variant="int4", threads=threads, slots=16),
        "paged (OpenVINO)": lambda: BatchEngine(
            path, variant="int4", threads=threads, slots=16, backend="ov", paged=True
        ),
    }
    runs: dict = {}
    for _ in range(2):
        for name, make in made.items():
            engine = make()
            try:
                for clients in (1, 16):
                    runs.setdefault((name, clients), []).append(
                        summarize(ours_closed_loop(engine, requests, clients))
                    )
            finally:
                engine.close()
    lines = [
        "",
        f"**The serve_load mix** ({count} requests, the vLLM peer's), BatchEngine int4, 16 slots, a closed loop at 1 "
        "and 16 in flight, 2 rounds (low–high), each round a fresh engine:",
        "",
        "| engine | 1 in flight tokens/s | 16 in flight tokens/s | 16 × 1 | TPOT p50 at 16 ms | TTFT p50 at 16 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in made:
        one = [r["tokens_per_s"] for r in runs[(name, 1)]]
        many = [r["tokens_per_s"] for r in runs[(name, 16)]]
        tpot = [r["tpot_p50_ms"] for r in runs[(name, 16)]]
        ttft = [r["ttft_p50_ms"] for r in runs[(name, 16)]]
        lines.append(
            f"| {name} | {min(one):.0f}–{max(one):.0f} | {min(many):.0f}–{max(many):.0f} | "
            f"{np.median(many) / np.median(one):.2f}× | {min(tpot):.1f}–{max(tpot):.1f} | "
            f"{min(ttft):.0f}–{max(ttft):.0f} |"
        )
    return lines


def main() -> int:
    import openvino as ov
    from common import ensure_bundle, ensure_variant, load_line, without_openvino, write_section

    from trtpipe.benchmark.decode import settle
    from trtpipe.runtime import Generator
    from trtpipe.runtime.ov import weight_group

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if without_openvino("paged-step", not args.no_write):
        return 0
    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int4")
    generator = Generator(path, variant="int4", threads=args.threads)
    runner, bundle = generator.runner, generator.bundle
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(100, 20000, CONTEXT)] for _ in range(max(ROWS) + 1)]
    capacity, token = 128, 318

    def timed(call) -> float:
        spent = []
        for _ in range(args.rounds):
            settle()
            call()
            for _ in range(10):
                t0 = time.perf_counter()
                call()
                spent.append(time.perf_counter() - t0)
        return float(np.median(spent)) * 1e3

    # ONNX Runtime first, before OpenVINO compiles anything in this process, and again after (its threads share
    # the cores with OpenVINO's)
    caches, ort = {}, {}
    for rows in ROWS:
        cache = caches[rows] = runner.new_cache(rows, capacity)
        out = np.empty((1, runner.vocab), np.float32)
        for row in range(rows):
            runner.prefill_row(prompts[row], cache, row, 0, out)
        tokens, lengths = np.full(rows, token), np.full(rows, CONTEXT)
        ort[rows] = timed(lambda t=tokens, n=lengths, c=cache: runner.decode(t, n, c, None))
    started = time.perf_counter()
    model, layers = paged_model(str(bundle.model_path("int4")), ov)
    paged = Paged(
        model, layers, args.threads, weight_group(bundle.variant("int4")), max(ROWS) + 1, capacity, ov
    )
    built = time.perf_counter() - started
    lines = [
        f"**One int4 decode step on OpenVINO's PagedAttention** (GPT-2 124M, random weights, context {CONTEXT}, "
        f"{args.threads} threads, median of {args.rounds} rounds of 10 steps after a pause), against ONNX Runtime's "
        "in-place graph on its own cache, timed before OpenVINO compiled anything in the process (and once more "
        f"after, in brackets). The paged model was built from `model.int4.onnx` and compiled in {built:.1f} s "
        f"(blocks of {paged.block} tokens, f32 cache). Alone: the largest |difference| between a row's logits "
        "decoded among R rows and decoded alone (0: a row's numbers do not depend on the rows beside it).",
        "",
        "| rows | ONNX Runtime ms (after) | paged ms | × ONNX Runtime | alone vs among R | logits vs ONNX Runtime "
        "(max / top-1) |",
        "|---|---|---|---|---|---|",
    ]
    # every sequence's prompt in one call (the last sequence: row 0's prompt again, to be decoded alone)
    paged.run([(p, s, 0) for s, p in enumerate(prompts)])
    alone_seq = max(ROWS)
    paged.run([(prompts[0], alone_seq, 0)])
    ratios = {}
    for rows in ROWS:
        tokens, lengths = np.full(rows, token), np.full(rows, CONTEXT)
        pieces = [([token], s, CONTEXT) for s in range(rows)]
        want = runner.decode(tokens, lengths, caches[rows], None)[0]
        got = paged.run(pieces)
        alone = paged.run([([token], alone_seq, CONTEXT)])[0]
        drift = float(np.abs(got[0] - alone).max())
        off = float(np.abs(got - want).max())
        top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
        ms = timed(lambda p=pieces: paged.run(p))  # rewrites position 64 each time, as ONNX Runtime does
        after = timed(lambda t=tokens, n=lengths, c=caches[rows]: runner.decode(t, n, c, None))
        ratios[rows] = ort[rows] / ms
        lines.append(
            f"| {rows} | {ort[rows]:.2f} ({after:.2f}) | {ms:.2f} | {ratios[rows]:.2f}× | {drift:.1e} | "
            f"{off:.2e} / {top1:.3f} |"
        )
    burst = [(p[:32], s, 0) for s, p in enumerate(prompts[:8])]
    paged.run(burst)
    spent = []
    for _ in range(args.rounds):
        settle()
        t0 = time.perf_counter()
        paged.run(burst)
        spent.append(time.perf_counter() - t0)
    lines += [
        "",
        f"A burst of 8 prompts of 32 tokens in one call: {float(np.median(spent)) * 1e3:.1f} ms (median of "
        f"{args.rounds}).",
    ]
    lines += serving(path, args.requests, args.threads)
    lines += ["", load_line(load)]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("paged-step", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
