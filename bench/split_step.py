"""A decode step split at its attention nodes: the weight products on OpenVINO, attention on ONNX Runtime in place.

OpenVINO's int4 kernel is the faster one from four rows on and row-independent (bench/weight_kernels.py), and ONNX
Runtime's GroupQueryAttention reads and writes the KV cache in place. This probe cuts the bundle's in-place int4
graph at its attention nodes: every stretch between two of them (layer norms, weight products, residual adds, the
LM head at the end) is compiled by OpenVINO (the runtime's `ov` settings, activations quantized per weight block),
every attention runs as a one-node ONNX Runtime session on that layer's cache buffers, bound in place. One step is
2L + 1 engine calls instead of one. It times one decode step at R rows (context 64) against ONNX Runtime's single
in-place graph on the same cache, splits the split step's time into its OpenVINO calls, its attention calls and the
rest, and checks its logits against ONNX Runtime's. GPT-2 124M, random weights: speed only. Not part of `make
bench` (a probe of a design trtpipe does not ship); writes the `split-step` section of docs/benchmarks.md.

    python bench/split_step.py          # ≈ 1 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import numpy as np

ROWS = (1, 4, 8, 16)
CONTEXT, CAPACITY = 64, 128


def node_model(path):
    """(a one-node ONNX model of the graph's first GroupQueryAttention, [query names], [attention output names])."""
    import onnx
    from onnx import TensorProto, helper

    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    node = onnx.NodeProto.FromString(nodes[0].SerializeToString())

    def info(name):
        kind = TensorProto.INT32 if name in ("seqlens_k", "total_sequence_length") else TensorProto.FLOAT
        return helper.make_tensor_value_info(name, kind, None)

    one = helper.make_graph(
        [node], "attention", [info(n) for n in node.input if n], [info(n) for n in node.output if n]
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(one, opset_imports=opsets, ir_version=8)
    return model, node, [n.input[0] for n in nodes], [n.output[0] for n in nodes]


def segments(model, ov, hidden: int, queries: list[str], answers: list[str]):
    """Cut OpenVINO's reading of the in-place graph at its attention tensors: [(ov.Model, input keys, output
    keys)], one per stretch. Keys: ("feed", name) a graph input, ("attn", l) attention l's output, ("query", l)
    its query, ("out", id, port) a tensor one stretch hands a later one, ("logits",)."""
    from openvino import opset13 as ops

    tensors = {n: out for op in model.get_ordered_ops() for out in op.outputs() for n in out.get_names()}
    answer_of = {}
    for layer, name in enumerate(answers):  # OpenVINO leaves the attention output's rank open: [B, S, hidden]
        param = ops.parameter(ov.PartialShape([-1, -1, hidden]), tensors[name].get_element_type())
        for port in list(tensors[name].get_target_inputs()):
            port.replace_source_output(param.output(0))
        answer_of[param.get_instance_id()] = layer
    model.add_parameters([op for op in model.get_ordered_ops() if op.get_instance_id() in answer_of])
    model.validate_nodes_and_infer_types()
    order = model.get_ordered_ops()
    level = {}
    for op in order:
        uid = op.get_instance_id()
        if uid in answer_of:
            level[uid] = answer_of[uid] + 1
        elif op.get_type_name() == "Parameter":
            level[uid] = 0
        elif op.get_type_name() == "Constant":
            level[uid] = -1  # constants, and what they alone compute, go with whichever stretch uses them
        else:
            level[uid] = max(level[i.get_source_output().get_node().get_instance_id()] for i in op.inputs())
    last = len(queries)
    logits = next(
        r for r in model.get_results() if "logits" in r.output(0).get_names() | r.input_value(0).get_names()
    )
    live, stack = set(), [tensors[n].get_node() for n in queries] + [logits.input_value(0).get_node()]
    while stack:  # what a query or the logits need (not OpenVINO's own attention)
        node = stack.pop()
        if node.get_instance_id() not in live:
            live.add(node.get_instance_id())
            stack.extend(i.get_source_output().get_node() for i in node.inputs())
    wanted = {s: {} for s in range(last + 1)}
    params = {s: {} for s in range(last + 1)}
    for layer, name in enumerate(queries):
        wanted[layer][("query", layer)] = tensors[name]
    wanted[last][("logits",)] = logits.input_value(0)
    for op in order:
        s = level[op.get_instance_id()]
        if s < 0 or op.get_instance_id() not in live or op.get_type_name() == "Parameter":
            continue
        for port in op.inputs():
            source = port.get_source_output()
            node = source.get_node()
            uid = node.get_instance_id()
            if level[uid] < 0:
                continue
            if node.get_type_name() == "Parameter":
                key = ("attn", answer_of[uid]) if uid in answer_of else ("feed", node.get_friendly_name())
                if level[uid] == s:
                    params[s].setdefault(key, node)
                    continue
            elif level[uid] < s:
                key = ("out", uid, source.get_index())
                wanted[level[uid]][key] = source
            else:
                continue
            if key not in params[s]:
                params[s][key] = ops.parameter(source.get_partial_shape(), source.get_element_type())
            port.replace_source_output(params[s][key].output(0))
    out = []
    for s in range(last + 1):
        results = list(wanted[s].items())
        inputs = list(params[s].items())
        stretch = ov.Model([ops.result(o) for _, o in results], [p for _, p in inputs], f"stretch{s}")
        stretch.validate_nodes_and_infer_types()
        out.append((stretch, [k for k, _ in inputs], [k for k, _ in results]))
    return out


class SplitStep:
    def stretches_alone(self, feeds: dict, calls: int = 20) -> float:
        """Median ms of the OpenVINO stretches alone, back to back, with no attention call between them (each
        attention's last output fed again): what the same calls cost without the hand-offs."""
        values = {("feed", n): self.ov.Tensor(v, shared_memory=True) for n, v in feeds.items()}
        values.update(self.answers)

        def once():
            for request, inputs, outputs in self.stretches:
                for i, key in enumerate(inputs):
                    request.set_input_tensor(i, values[key])
                request.infer()
                for i, key in enumerate(outputs):
                    values[key] = request.get_output_tensor(i)

        from common import median_ms

        return median_ms(once, calls)

    def __init__(self, bundle, variant: str, threads: int, attention_threads=None, spin=False, pin=False):
        import onnxruntime as ort
        import openvino as ov

        from trtpipe.runtime.ov import compile_config, weight_group

        path = bundle.model_path(f"{variant}.kv-inplace")
        self.hidden = bundle.model["num_heads"] * bundle.model["head_dim"]
        model, node, queries, answers = node_model(path)
        core = ov.Core()
        config = compile_config(threads, group=weight_group(bundle.variant(variant)))
        if pin:
            config["ENABLE_CPU_PINNING"] = True
        cut = segments(core.read_model(str(path)), ov, self.hidden, queries, answers)
        self.stretches = [
            (core.compile_model(m, "CPU", config).create_infer_request(), i, o) for m, i, o in cut
        ]
        self.answers: dict = {}  # ("attn", l) → the last output of attention l
        self.layers, self.query, self.attn = len(queries), node.input[0], node.output[0]
        self.past, self.present = list(node.input[3:5]), list(node.output[1:3])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = attention_threads or threads, 1
        # by default its threads do not spin, which would take the cores from OpenVINO's
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.attention = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
        self.ov, self.bindings, self.lengths, self.spent = ov, {}, {}, Counter()

    def _binding(self, cache, layer: int, batch: int):
        found = self.bindings.get((id(cache), layer, batch))
        if found is None:
            io = self.attention.io_binding()
            for offset, (past, present) in enumerate(zip(self.past, self.present)):
                view = cache.view(0, 2 * layer + offset, 0, batch, 0)
                io.bind_input(past, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
                io.bind_output(present, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
            query = np.empty((batch, 1, 3 * self.hidden), np.float32)
            out = np.empty((batch, 1, self.hidden), np.float32)
            seqlens, total = self.lengths.setdefault(
                batch, (np.zeros(batch, np.int32), np.zeros((), np.int32))
            )
            for array, name in (
                (query, self.query),
                (seqlens, "seqlens_k"),
                (total, "total_sequence_length"),
            ):
                io.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            io.bind_output(self.attn, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
            found = self.bindings[(id(cache), layer, batch)] = (
                io,
                query,
                self.ov.Tensor(out, shared_memory=True),
            )
        return found

    def decode(self, feeds: dict, cache, batch: int, logits: np.ndarray) -> None:
        clock = time.perf_counter
        seqlens, total = self.lengths.setdefault(batch, (np.zeros(batch, np.int32), np.zeros((), np.int32)))
        seqlens[...], total[...] = feeds["seqlens_k"], feeds["total_sequence_length"]
        values = {("feed", n): self.ov.Tensor(v, shared_memory=True) for n, v in feeds.items()}
        for s, (request, inputs, outputs) in enumerate(self.stretches):
            for i, key in enumerate(inputs):
                request.set_input_tensor(i, values[key])
            started = clock()
            request.infer()
            self.spent["OpenVINO calls"] += clock() - started
            for i, key in enumerate(outputs):
                values[key] = request.get_output_tensor(i)
            if s == self.layers:
                break
            io, query, out = self._binding(cache, s, batch)
            np.copyto(query, values[("query", s)].data)
            started = clock()
            self.attention.run_with_iobinding(io)
            self.spent["attention calls"] += clock() - started
            values[("attn", s)] = self.answers[("attn", s)] = out
        logits[:batch] = values[("logits",)].data.reshape(batch, -1)


def main() -> int:
    from common import ensure_bundle, ensure_variant, load_line, without_openvino, write_section

    from trtpipe.benchmark.decode import settle
    from trtpipe.runtime import Generator, kv

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--attention-threads", type=int, help="ONNX Runtime's threads for attention (default --threads)"
    )
    parser.add_argument(
        "--attention-spin", action="store_true", help="let ONNX Runtime's threads spin between calls"
    )
    parser.add_argument("--ov-pinning", action="store_true", help="pin OpenVINO's threads to cores")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if without_openvino("split-step", not args.no_write):
        return 0
    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int4")
    generator = Generator(path, variant="int4", threads=args.threads)
    runner = generator.runner
    split = SplitStep(
        generator.bundle, "int4", args.threads, args.attention_threads, args.attention_spin, args.ov_pinning
    )
    settings = [
        f"attention on {args.attention_threads} thread(s)" if args.attention_threads else "",
        "ONNX Runtime's threads spinning" if args.attention_spin else "",
        "OpenVINO's threads pinned" if args.ov_pinning else "",
    ]
    settings = ", ".join(x for x in settings if x)
    lines = [
        f"**One int4 decode step, split at its attention nodes** (GPT-2 124M, random weights, context {CONTEXT}, "
        f"{args.threads} threads, median of {args.rounds} interleaved rounds of 10 steps each after a pause): ONNX "
        f"Runtime's one in-place graph against {len(split.stretches)} OpenVINO calls (the stretches between the "
        f"attentions) and {split.layers} ONNX Runtime attention calls on the same cache layout. The split step's "
        "time by part (means): its OpenVINO calls, its attention calls, the rest (binding, copies, Python); and the "
        "OpenVINO stretches alone: the same calls back to back with no attention call between them."
        + (f" Settings: {settings}." if settings else ""),
        "",
        "| rows | ONNX Runtime ms | split ms | × ONNX Runtime | OpenVINO calls ms | attention calls ms | rest ms | "
        "OpenVINO stretches alone ms | logits max abs diff | top-1 equal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios, inside = {}, {}
    for rows in ROWS:
        ours, theirs = runner.new_cache(rows, CAPACITY), runner.new_cache(rows, CAPACITY)
        tokens, lengths = np.full(rows, 318), np.full(rows, CONTEXT)
        feeds = kv.inplace_decode(tokens, lengths)
        logits = np.empty((rows, runner.vocab), np.float32)
        want = runner.decode(tokens, lengths, ours, None)[0]
        split.decode(dict(feeds), theirs, rows, logits)
        diff = float(np.abs(want - logits).max())
        top1 = float((want.argmax(-1) == logits.argmax(-1)).mean())
        calls = {
            "ort": lambda t=tokens, n=lengths, c=ours: runner.decode(t, n, c, None),
            "split": lambda f=feeds, c=theirs, r=rows, out=logits: split.decode(dict(f), c, r, out),
        }
        spent = {name: [] for name in calls}
        parts = Counter()
        for _ in range(args.rounds):
            for name, call in calls.items():
                settle()
                call()
                split.spent.clear()
                for _ in range(10):
                    started = time.perf_counter()
                    call()
                    spent[name].append(time.perf_counter() - started)
                if name == "split":
                    parts.update(split.spent)
        ms = {name: float(np.median(v)) * 1e3 for name, v in spent.items()}
        per = {k: v / (10 * args.rounds) * 1e3 for k, v in parts.items()}  # means, like the rest
        rest = float(np.mean(spent["split"])) * 1e3 - per["OpenVINO calls"] - per["attention calls"]
        ratios[rows] = ms["ort"] / ms["split"]
        inside[rows] = split.stretches_alone(dict(feeds))
        lines.append(
            f"| {rows} | {ms['ort']:.2f} | {ms['split']:.2f} | {ratios[rows]:.2f}× | {per['OpenVINO calls']:.2f} | "
            f"{per['attention calls']:.2f} | {rest:.2f} | {inside[rows]:.2f} | "
            f"{diff:.2e} | {top1:.3f} |"
        )
    lines += ["", load_line(load)]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("split-step", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
