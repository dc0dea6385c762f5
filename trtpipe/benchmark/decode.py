"""Decoder benchmark: TTFT, TPOT (p50/p99), tokens/s for our runtime and its peers on the same real prompts, rounds
interleaved so machine drift hits every row alike; plus the DRAM and prefill-compute floors measured in the run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import corpus
from ..console import progress, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError, with_article
from .stats import per_round_p99, summarize


def clocked(start):
    """`start()`'s tokens timed as the peers' are (a clock at every token as the caller receives it, from before
    `start` is called): TTFT = the first token, each step = one token to the next."""
    from .peers import Timed

    clock = time.perf_counter
    ids: list[int] = []
    times: list[float] = []
    started = clock()
    for token in start():
        times.append(clock())
        ids.append(token.id)
    return Timed(times[0] - started, [b - a for a, b in zip(times, times[1:])], ids)


class OursDecoder:
    def __init__(
        self,
        bundle: Bundle,
        variant: str | None,
        threads: int | None,
        kv: str = "auto",
        backend: str = "ort-cpu",
        prefill_backend: str | None = None,
        kv_cache: str = "fp32",
    ):
        from ..runtime.generate import Generator

        self.generator = Generator(
            bundle,
            backend=backend,
            variant=variant,
            threads=threads,
            kv=kv,
            prefill_backend=prefill_backend,
            kv_cache=kv_cache,
        )
        self.prefill_backend = self.generator.prefill_backend  # None where the decoding backend prefills
        self.kv_cache = kv_cache
        kind = "in-place KV" if self.generator.inplace else "ping-pong KV"
        if kv_cache != "fp32":
            kind = f"in-place {kv_cache} KV"
        if self.prefill_backend:
            kind += f", {self.prefill_backend} prefill"
        self.label = f"trtpipe {variant or 'fp32'} ({kind})" + (
            "" if backend == "ort-cpu" else f" [{backend}]"
        )
        self.variant_file = bundle.variants[self.generator.variant]["file"] if backend != "trt" else None
        self.variant = variant
        self.backend = backend

    def run(self, prompt: list[int], new_tokens: int):
        """Timed as the peers are (a clock at every token as the caller receives it): TTFT = the first token,
        each step = one token to the next — the graph call, sampling, detokenising and the loop's own Python."""
        return clocked(lambda: self.generator.stream([prompt], new_tokens, ignore_eos=True))


class PagedRow:
    """One request at a time on OpenVINO's paged engine (`BatchEngine(..., backend="ov", paged=True)`, one slot;
    `kv_cache="int8"`: its u8 cache), timed as `OursDecoder` is: a prompt is one call, with only its last token's
    logits, so this row is the engine's first token and its one-row step."""

    def __init__(self, bundle: Bundle, variant: str | None, threads: int | None, kv_cache: str = "fp32"):
        from ..runtime.batching import BatchEngine

        self.engine = BatchEngine(
            bundle.path,
            variant=variant,
            threads=threads,
            slots=1,
            backend="ov",
            paged=True,
            kv_cache=kv_cache,
        )
        cache = "u8" if kv_cache == "int8" else "f32"
        self.label = f"trtpipe {variant or 'fp32'} (OpenVINO's paged engine, one slot, {cache} cache)"
        self.variant, self.backend, self.prefill_backend, self.kv_cache = variant, "ov", None, kv_cache
        self.variant_file = bundle.variants[variant or "fp32"]["file"]

    def run(self, prompt: list[int], new_tokens: int):
        return clocked(lambda: self.engine.stream(self.engine.submit(prompt, new_tokens, ignore_eos=True)))


@dataclass
class DecodeResult:
    label: str
    kind: str
    prompt_len: int
    new_tokens: int
    ttft: dict = field(default_factory=dict)
    tpot: dict = field(default_factory=dict)  # every decode step of every round, pooled
    tpot_rounds: dict = field(
        default_factory=dict
    )  # p99 of each round and their median (stats.per_round_p99)
    steps_ms: list = field(default_factory=list)  # per round, each decode step's ms, in step order (the plot)
    tokens_per_s: float | None = None
    tpot_by_past: list = field(default_factory=list)  # (past length, median ms) for the TPOT-vs-context plot
    ids: list[int] = field(default_factory=list)
    peak_rss: int | None = None
    peak_rss_note: str | None = None  # why peak_rss was not measured
    error: str | None = None
    variant: str | None = None
    backend: str | None = None  # our rows: the session backend (memory is measured on the same one)
    prefill_backend: str | None = None  # our rows: the engine that ran the prompts, when not the backend
    kv_cache: str | None = None  # our rows: the KV cache's type (int8: the kv8 twins)


def make_rows(
    bundle: Bundle,
    variants: list[str],
    baselines: list[str],
    threads: int | None,
    backend: str = "ort-cpu",
    genai_variants: list[str] | None = None,
    prefill_backend: str | None = None,
    kv_cache: str = "fp32",
) -> list:
    rows = []
    for variant in variants:
        rows.append(
            (
                "ours",
                lambda v=variant: OursDecoder(
                    bundle,
                    None if v == "fp32" else v,
                    threads,
                    backend=backend,
                    prefill_backend=prefill_backend,
                    kv_cache=kv_cache,
                ),
            )
        )
    from . import peers

    for name in baselines:
        if name == "torch":
            rows.append(("torch", lambda: peers.TorchDecoder(bundle, threads)))
        elif name == "optimum":
            rows.append(("optimum", lambda: peers.OptimumDecoder(bundle, threads)))
        elif name == "genai":
            for variant in genai_variants or ["fp32"]:
                file = bundle.variants[variant]["file"]
                rows.append(("genai", lambda f=file: peers.GenaiDecoder(bundle, threads, f)))
        else:
            raise UserError(f"unknown baseline {name!r}; choose from torch, optimum, genai")
    return rows


def prompt_ids(bundle: Bundle, length: int) -> list[int]:
    """Real text, tokenized, cut to exactly `length` tokens."""
    from ..runtime.text import TextEncoder

    encoder = TextEncoder(bundle)
    ids: list[int] = []
    for sentence in corpus.sentences("all"):
        ids += encoder.encode_prompt(sentence + " ")
        if len(ids) >= length:
            return ids[:length]
    raise UserError(f"the offline corpus is too short for {with_article(length)}-token prompt")


# Rows run back to back in one process spin up each other's threads: ONNX Runtime's intra-op pool spins after a
# run, OpenVINO's TBB workers too, so a row started at once shares the cores with the last row's spinning threads
# (measured: GPT-2 TTFT at prompt 32, int4 39.7 ms back to back, 18.3 after a 50 ms pause, 16.2 after 200 ms, 15
# alone). Each row starts after this pause, as a service running one model would.
SETTLE_S = 0.2


def settle() -> None:
    time.sleep(SETTLE_S)


def run_decode(
    bundle: Bundle, prompt_lens: list[int], new_tokens: int, rows: list, rounds: int = 3, warmup: int = 1
) -> list[DecodeResult]:
    from .shapes import decoder_shapes

    decoder_shapes(bundle, prompt_lens, new_tokens)  # a UserError naming the limit when they do not fit
    built = []
    for kind, factory in rows:
        try:
            built.append((kind, factory(), None))
        except (UserError, ImportError, OSError, RuntimeError) as exc:
            warn(f"skipping {kind}: {str(exc).splitlines()[0][:200]}")
            built.append((kind, None, str(exc).splitlines()[0][:200]))
    results: list[DecodeResult] = []
    with progress() as bar:
        task = bar.add_task("decode benchmark", total=len(prompt_lens) * len(built) * (rounds + warmup))
        for p in prompt_lens:
            prompt = prompt_ids(bundle, p)
            samples = {i: {"ttft": [], "steps": [], "ids": None} for i in range(len(built))}
            for round_index in range(rounds + warmup):
                for index, (_, runner, _) in enumerate(built):
                    bar.advance(task)
                    if runner is None:
                        continue
                    settle()
                    timed = runner.run(prompt, new_tokens)
                    if round_index < warmup:
                        continue
                    samples[index]["ttft"].append(timed.ttft)
                    samples[index]["steps"].append(timed.steps)
                    samples[index]["ids"] = timed.ids
            for index, (kind, runner, error) in enumerate(built):
                label = getattr(runner, "label", kind)
                result = DecodeResult(
                    label,
                    kind,
                    p,
                    new_tokens,
                    error=error,
                    variant=getattr(runner, "variant", None),
                    backend=getattr(runner, "backend", None),
                    prefill_backend=getattr(runner, "prefill_backend", None),
                    kv_cache=getattr(runner, "kv_cache", None),
                )
                if runner is not None:
                    steps = [s for run in samples[index]["steps"] for s in run]
                    result.ttft = summarize(samples[index]["ttft"])
                    result.tpot = summarize(steps)
                    result.tpot_rounds = per_round_p99(samples[index]["steps"])
                    result.steps_ms = [[s * 1e3 for s in run] for run in samples[index]["steps"]]
                    total = [
                        samples[index]["ttft"][r] + sum(samples[index]["steps"][r]) for r in range(rounds)
                    ]
                    result.tokens_per_s = new_tokens / float(np.median(total))
                    per_step = np.median(np.array(samples[index]["steps"]), axis=0) * 1e3
                    result.tpot_by_past = [(p + i + 1, float(v)) for i, v in enumerate(per_step)]
                    result.ids = samples[index]["ids"]
                results.append(result)
    return results


# ------------------------------------------------------------------------------------------------- floors


MATRIX_OPS = ("MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm")


def weight_bytes_per_token(path) -> int:
    """Bytes of the initializers every decode step must read: the inputs of matrix ops (weights, quantised weights,
    scales); embedding tables that are only gathered from are not read in full."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    read: set[str] = set()
    for node in model.graph.node:
        if node.op_type in MATRIX_OPS or node.op_type in ("DequantizeLinear",):
            read.update(name for name in node.input if name in inits)
    total = 0
    for name in read:
        init = inits[name]
        size = int(np.prod(init.dims)) if init.dims else 1
        total += size * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def floors(
    bundle: Bundle, variant_file: str, prompt_len: int, new_tokens: int, bandwidth: float, gemm: float
) -> dict:
    """DRAM floor of TPOT ((weights + mean KV) / read bandwidth) and compute floor of TTFT (prefill FLOPs / GEMM rate)."""
    m = bundle.model
    layers, hidden, vocab = m["num_layers"], m["hidden_size"], bundle.limits["vocab_size"]
    weights = weight_bytes_per_token(bundle.path / variant_file)
    mean_past = prompt_len + new_tokens / 2
    kv = 2 * layers * m["num_heads"] * m["head_dim"] * 4 * mean_past
    matmul_params = 12 * layers * hidden * hidden  # qkv 3C², proj C², mlp 8C²
    flops = 2 * matmul_params * prompt_len + 4 * layers * prompt_len**2 * hidden + 2 * hidden * vocab
    return {
        "weight_bytes": weights,
        "kv_bytes_mean": kv,
        "bandwidth_Bps": bandwidth,
        "gemm_flops": gemm,
        "tpot_floor_ms": (weights + kv) / bandwidth * 1e3,
        "prefill_flops": flops,
        "ttft_floor_ms": flops / gemm * 1e3,
    }


def measure_floors(threads: int) -> tuple[float, float]:
    """(DRAM read bandwidth B/s, fp32 compute roof FLOP/s): the machine's roofs, not one engine's."""
    from .floors import dram_read_bandwidth, gemm_rate

    return dram_read_bandwidth(threads), gemm_rate(threads)
