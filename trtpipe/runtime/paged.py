"""`PagedDecoder`: BatchEngine's runner on OpenVINO's PagedAttention (`BatchEngine(..., backend="ov", paged=True)`).

OpenVINO's int4 and int8-wo weight products are the faster ones from four rows on, ONNX Runtime's at one or two
(`bench/weight_kernels.py`). To get them, a whole step has to be one OpenVINO call with the KV cache inside it
(`bench/split_step.py`: 25 calls a step give the gain back). OpenVINO has such a model, the one openvino-genai's
ContinuousBatchingPipeline runs. Here it is built from the bundle's own interop graph, with OpenVINO's API alone
(no onnx at run time), when the engine starts (about a second for GPT-2 124M):

- a ScaledDotProductAttention where each layer's exported attention is (Q·Kᵀ, softmax, ·V);
- the past K/V become OpenVINO state: ReadValue, initialised empty, then Gather(beam_idx), Concat, and an Assign;
- OpenVINO's own `paged_attention_transformation`: every sequence's new tokens go in one flat batch, and the cache
  lives in blocks that this runner owns and OpenVINO writes in place;
- each sequence's last token is gathered after the final layer norm, so a prompt's other positions cost no logits.

Each slot owns a fixed run of blocks, enough for the capacity. So BatchEngine's row packing swaps two block tables
and copies nothing, and a step's prompt pieces and decoding rows are each one call. Measured on a 2-core Zen 4 EPYC,
GPT-2 124M int4 (`bench/paged_step.py`, four runs): a decode step at 8 rows 1.03-1.58x ONNX Runtime's in-place
graph, at 16 1.25-1.67x, at one row 0.68-0.88x. A decode call with fewer sequences than threads gets empty sequences
(`_run`), so a row's numbers never depend on the rows beside it: each request gets what it gets alone, bit for bit
(that cost 0-8 % of a one-row step at 2 threads, contexts 64-512).
"""

from __future__ import annotations

import numpy as np

from .bundle import Bundle
from .errors import UserError
from .ov import compile_config, import_openvino, weight_group
from .session import int8_cache, int8_twin
from .slots import SlotDecoder


def _attention_to_sdpa(ops, tensors: dict, layers: int) -> None:
    """Each layer's exported attention (MatMul(Q, Kᵀ) … MatMul(·, V)) replaced by one ScaledDotProductAttention on
    the same Q and the concatenated K/V (its mask is there for the pattern only: PagedAttention is causal)."""
    zero_mask = ops.constant(np.zeros((1, 1, 1, 1), np.float32))
    for layer in range(layers):
        k, v = tensors[f"present.{layer}.key"], tensors[f"present.{layer}.value"]
        k_t = next(
            (i.get_node() for i in k.get_target_inputs() if i.get_node().get_type_name() == "Transpose"), None
        )
        p_v = next(
            (i.get_node() for i in v.get_target_inputs() if i.get_node().get_type_name() == "MatMul"), None
        )
        if k_t is None or p_v is None:
            raise UserError(
                "this graph's attention is not the exported MatMul/Softmax form paged=True rebuilds"
            )
        q_k = next(iter(k_t.output(0).get_target_inputs())).get_node()
        sdpa = ops.scaled_dot_product_attention(q_k.input_value(0), k, v, zero_mask, causal=False)
        for port in list(p_v.output(0).get_target_inputs()):
            port.replace_source_output(sdpa.output(0))


def _state(model, ov, ops, params: dict, layers: int, heads: int, head_dim: int) -> None:
    """The past K/V inputs and present outputs as OpenVINO state, the way optimum-intel's stateful exports have it."""
    from openvino import opset6
    from openvino.op import assign
    from openvino.op.util import Variable, VariableInfo

    beam = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam.output(0).set_names({"beam_idx"})
    batch = ops.gather(
        ops.shape_of(params["input_ids"]), ops.constant(np.array([0], np.int64)), ops.constant(0)
    )
    shape = ops.concat([batch, ops.constant(np.array([heads, 0, head_dim], np.int64))], 0)
    empty = ops.broadcast(ops.constant(np.float32(0)), shape)
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


def _last_tokens(model, ops) -> None:
    """Gather the tokens a new `last_tokens` input names (each piece's last) out of the final layer norm's output,
    before the LM head (whatever kernel the variant's LM head is); the empty sequences `PagedDecoder._run` adds get
    no logits row."""
    last = ops.parameter([-1], np.int32, name="last_tokens")
    last.output(0).set_names({"last_tokens"})
    model.add_parameters([last])
    norm = [op for op in model.get_ordered_ops() if op.get_type_name() == "MVN"][-1]  # the final layer norm
    out = norm.output(0)
    while len(out.get_target_inputs()) == 1:  # its scale and shift
        node = next(iter(out.get_target_inputs())).get_node()
        if node.get_type_name() not in ("Multiply", "Add") or node.get_output_size() != 1:
            break
        out = node.output(0)
    targets = list(out.get_target_inputs())
    picked = ops.gather(out, last, ops.constant(0))
    for port in targets:
        port.replace_source_output(picked.output(0))


def paged_model(path, ov):
    """OpenVINO's reading of the interop GPT-2 graph at `path`, as a PagedAttention model. Returns (model, layers)."""
    import openvino._offline_transformations as offline
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(path))
    tensors = {
        n: o
        for op in model.get_ordered_ops()
        if op.get_type_name() != "Result"
        for o in op.outputs()
        for n in o.get_names()
    }
    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    layers = sum(1 for n in params if n.startswith("past_key_values.") and n.endswith(".key"))
    if not layers or "present.0.key" not in tensors:
        raise UserError("paged=True takes the interop GPT-2 graph (past_key_values.* in, present.* out)")
    shape = params["past_key_values.0.key"].get_partial_shape()
    heads, head_dim = shape[1].get_length(), shape[3].get_length()
    _attention_to_sdpa(ops, tensors, layers)
    _state(model, ov, ops, params, layers, heads, head_dim)
    model.validate_nodes_and_infer_types()
    offline.paged_attention_transformation(model)
    _last_tokens(model, ops)
    model.validate_nodes_and_infer_types()
    return model, layers


class PagedCache:
    """Each slot's run of blocks (its block table) in the caches OpenVINO writes in place."""

    def __init__(self, slots: int, per_slot: int, block: int, nbytes: int):
        self.block, self.per_slot, self.nbytes = block, per_slot, nbytes
        self.tables = [np.arange(r * per_slot, (r + 1) * per_slot, dtype=np.int32) for r in range(slots)]

    def reset(self, row: int) -> None:
        """Nothing to clear: a slot's next request writes its blocks from position 0."""

    def swap_rows(self, a: int, b: int, length_a: int = 0, length_b: int = 0) -> None:
        self.tables[a], self.tables[b] = self.tables[b], self.tables[a]  # `packing.py`: no K/V moves

    def blocks(self, row: int, tokens: int) -> np.ndarray:
        return self.tables[row][: -(-tokens // self.block)]


class PagedDecoder:
    """BatchEngine's runner (`new_cache`, `prefill_row`, `prefill_rows`, `decode`) on the paged model of `variant`."""

    inplace = False
    prefill_batches = True  # a step's prompt pieces are one call (`prefill_rows`)

    def __init__(self, bundle: Bundle, variant: str | None, threads: int | None = None, cache: str = "f32"):
        """`cache`: f32, or u8: OpenVINO's 8-bit cache, lossy, so BatchEngine takes it only where `u8_gate` finds
        the bundle's gate. Its keys are quantised by token here, as its values are (each token's row its own scale
        and zero point), so a row's numbers do not depend on how its prompt was cut: by channel, OpenVINO's CPU
        default, a block's keys share scales, and a prompt in chunks came out 8e-3 off the same prompt whole."""
        ov = import_openvino()
        entry = bundle.variant(variant)
        if not bundle.is_decoder:
            raise UserError("paged=True serves GPT-2 bundles")
        config = {**compile_config(threads, group=weight_group(entry)), "KV_CACHE_PRECISION": cache}
        if cache == "u8":
            config["KEY_CACHE_QUANT_MODE"] = "BY_TOKEN"
        try:
            model, self.layers = paged_model(bundle.model_path(variant), ov)
            self.compiled = ov.Core().compile_model(model, "CPU", config)
        except (RuntimeError, StopIteration, IndexError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"paged=True could not build OpenVINO's paged model of {variant or 'fp32'} ({reason}); "
                f"use paged=False{' or kv_cache=fp32' if cache != 'f32' else ''}"
            ) from None
        self.request = self.compiled.create_infer_request()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))  # `_run`'s empty sequences
        self.vocab = bundle.limits["vocab_size"]
        self.ov = ov

    def new_cache(self, slots: int, capacity: int) -> PagedCache:
        """Blocks of `block` tokens (the value cache's third axis; a u8 key cache adds its scales and zero points
        to that axis, a u8 value cache to the last), enough for `capacity` tokens in each of `slots` slots."""
        block = self.compiled.input("value_cache.0").get_partial_shape()[2].get_length()
        per_slot = -(-capacity // block)
        nbytes = 0
        for layer in range(self.layers):
            for kind in ("key", "value"):
                port = self.compiled.input(f"{kind}_cache.{layer}")
                dims = [d.get_length() for d in list(port.get_partial_shape())[1:]]
                tensor = self.ov.Tensor(port.get_element_type(), self.ov.Shape([slots * per_slot, *dims]))
                tensor.data[...] = 0
                self.request.set_tensor(port.get_any_name(), tensor)
                nbytes += tensor.byte_size
        return PagedCache(slots, per_slot, block, nbytes)

    def _run(self, pieces: list[tuple[list[int], int, int]], cache: PagedCache) -> np.ndarray:
        """Every piece (ids, row, past) in one call; the logits of each piece's last token, [pieces, V].

        A call of one-token pieces only, fewer than the threads, gets empty sequences (no tokens, no blocks, no
        logits) up to the thread count. With fewer sequences than threads OpenVINO's PagedAttention splits each
        sequence's positions across the threads and adds the parts (its `exec_loop_bhl`), otherwise it runs each
        (sequence, head) on one thread (`exec_loop_mixed`); so without them a row decoded alone came out 5e-7 off
        the same row decoded beside others (`bench/paged_step.py`), and with them it is bit for bit the same."""
        lengths = [len(ids) for ids, _, _ in pieces]
        tables = [cache.blocks(row, past + n) for (_, row, past), n in zip(pieces, lengths)]
        ends = np.cumsum(lengths)
        empty = max(self.threads - len(pieces), 0) if max(lengths) == 1 else 0
        feeds = {
            "input_ids": np.concatenate([np.asarray(ids, np.int64) for ids, _, _ in pieces]),
            "position_ids": np.concatenate(
                [np.arange(past, past + n, dtype=np.int64) for (_, _, past), n in zip(pieces, lengths)]
            ),
            "past_lens": np.array([past for _, _, past in pieces] + [0] * empty, np.int32),
            "subsequence_begins": np.concatenate([[0], ends, [ends[-1]] * empty]).astype(np.int32),
            "block_indices": np.concatenate(tables).astype(np.int32),
            "block_indices_begins": np.cumsum([0] + [len(t) for t in tables] + [0] * empty).astype(np.int32),
            "max_context_len": np.array(max(past + n for (_, _, past), n in zip(pieces, lengths)), np.int32),
            "last_tokens": (ends - 1).astype(np.int32),
        }
        for name, value in feeds.items():
            self.request.set_tensor(name, self.ov.Tensor(value))
        self.request.infer()
        return self.request.get_tensor("logits").data.reshape(len(pieces), -1)

    def prefill_row(self, ids: list[int], cache: PagedCache, row: int, past: int, logits: np.ndarray) -> None:
        logits[0] = self._run([(ids, row, past)], cache)[0]

    def prefill_rows(
        self, pieces: list[tuple[list[int], int, int]], cache: PagedCache, logits: np.ndarray
    ) -> None:
        logits[: len(pieces)] = self._run(pieces, cache)

    def decode(
        self, tokens: np.ndarray, lengths: np.ndarray, cache: PagedCache, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, None]:
        """One step for rows [0, B) after `lengths` cached tokens each; the logits [B, V]."""
        pieces = [([int(t)], row, int(n)) for row, (t, n) in enumerate(zip(tokens, lengths))]
        return self._run(pieces, cache).copy(), None


def u8_gate(bundle: Bundle, base: str) -> None:
    """A UserError naming the fix unless `optimize --precision kv8` gated OpenVINO's u8 cache for weights `base`
    (the `paged_u8` record of its kv8 twin, `optimize/paged_u8.py`) and it passed, or was forced."""
    name = int8_twin(base)
    command = f"trtpipe optimize {bundle.path} --precision kv8"
    record = bundle.variants.get(name, {}).get("paged_u8")
    if record is None:
        raise UserError(
            f"kv_cache='int8' with paged=True is OpenVINO's u8 cache, and {bundle.path} has no gate for it on "
            f"{base}; run `{command}` with openvino installed, or leave the cache at fp32"
        )
    if record["verdict"] != "pass" and not record["forced"]:
        raise UserError(
            f"OpenVINO's u8 cache failed the LM gate on {base} ({'; '.join(record['failures'])}); leave the "
            f"cache at fp32, or rebuild with `{command} --overwrite --force`"
        )
    if (reason := bundle.stale(name)) is not None:
        raise UserError(
            f"the {name} gate of {bundle.path} is stale ({reason}); rebuild it with `{command} --overwrite`"
        )


def int8_check(bundle: Bundle, base: str, backend: str, paged: bool) -> None:
    """What BatchEngine(kv_cache="int8") checks, for a caller that checks before building anything (`trtpipe
    triton`): the u8 cache's gate on the paged engine, the kv8 twin elsewhere (`session.int8_cache`)."""
    if paged:
        u8_gate(bundle, base)
    else:
        int8_cache(bundle, base, backend, "auto", "int8")


def ov_runner(
    bundle: Bundle, runner, backend: str, variant: str | None, threads: int | None, paged: bool, kv_cache: str
):
    """BatchEngine's runner on OpenVINO, from the Generator's `runner`: the paged model (`paged=True`; the
    Generator's own compiled interop graph is closed, the paged model holds its own weights; kv_cache="int8":
    OpenVINO's u8 cache, where `u8_gate` passes) or the interop graph with a shared width (`slots.py`)."""
    if backend != "ov":
        raise UserError("paged=True runs on OpenVINO: use backend='ov'")
    if not paged:
        return SlotDecoder(bundle, runner.session)
    if kv_cache not in ("fp32", "int8"):
        raise UserError(f"kv_cache must be fp32 or int8 (got {kv_cache!r})")
    if kv_cache == "int8":
        u8_gate(bundle, variant or "fp32")
    decoder = PagedDecoder(bundle, variant, threads, cache="u8" if kv_cache == "int8" else "f32")
    runner.session.close()
    return decoder
