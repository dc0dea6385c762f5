"""KV-cached GPT-2 decoding: prefill once, then one token per step; greedy or sampled; batched; streamed.

Buffer ownership lives in one place, `KVCache`: every buffer a request needs is allocated once, up to the
request's maximum length, and no step allocates a growing cache.
- in place (the `kv-inplace` variant, ONNX Runtime CPU): one [B, H, T, D] buffer per layer and kind, bound as both
  past and present; the graph writes each new row where it belongs.
- ping-pong (the standard interop graph): two flat buffers per tensor; past is a view of one at the current length
  and present is written by the graph into the other (a copy of past plus one row), then they swap.
The slow, obviously-correct oracle (`generate_uncached`: the full sequence every step, no cache) stays here too;
tests hold the fast paths to it token for token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle
from .errors import UserError
from .session import open_session
from .text import TextEncoder

# ------------------------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy. top_k 0 = off. top_p 1 = off. Applied in transformers' order:
    repetition penalty → temperature → top-k → top-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"--temperature must be ≥ 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be ≥ 0 (0 = off), got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise UserError(f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: np.ndarray, history: list[np.ndarray], penalty: float) -> None:
    """transformers' rule, in place: seen tokens' logits are divided by the penalty if positive, else multiplied."""
    if penalty == 1.0:
        return
    for row, seen in enumerate(history):
        ids = np.unique(seen)
        values = logits[row, ids]
        logits[row, ids] = np.where(values > 0, values / penalty, values * penalty)


def sample_next(
    logits: np.ndarray, sampling: Sampling, rng: np.random.Generator, history: list[np.ndarray] | None = None
) -> np.ndarray:
    """logits [B, V] → next ids [B]. Sorting 50k logits costs milliseconds, so top-p first narrows the
    candidates with a linear-time partition and widens only if they do not cover top_p."""
    logits = np.array(logits, dtype=np.float32, copy=True)
    if history is not None:
        apply_repetition_penalty(logits, history, sampling.repetition_penalty)
    if sampling.greedy:
        return logits.argmax(axis=-1)
    logits /= sampling.temperature
    rows, vocab = logits.shape
    out = np.empty(rows, dtype=np.int64)
    for row in range(rows):
        scores = logits[row]
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        top_k = sampling.top_k if 0 < sampling.top_k < vocab else vocab
        if top_k == vocab and sampling.top_p >= 1.0:
            out[row] = min(int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum())), vocab - 1)
            continue
        width = top_k if top_k < vocab else min(vocab, 256)
        while True:
            cand = np.argpartition(-scores, width - 1)[:width] if width < vocab else np.arange(vocab)
            if top_k < vocab or width == vocab or probs[cand].sum() >= sampling.top_p:
                break
            width = min(vocab, width * 4)
        cand = cand[np.argsort(-probs[cand], kind="stable")]
        kept = probs[cand] / probs[cand].sum()
        if sampling.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(kept), sampling.top_p)) + 1
            cand, kept = cand[:keep], kept[:keep] / kept[:keep].sum()
        cumulative = np.cumsum(kept)
        out[row] = cand[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1])), len(cand) - 1)]
    return out


# ---------------------------------------------------------------------------------------------- detokenize


class TextStream:
    """Incremental detokenisation for byte-level BPE: emits text only once it forms whole UTF-8 characters."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def put(self, token: int) -> str:
        self.ids.append(int(token))
        before = self.encoder.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self.encoder.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


# ------------------------------------------------------------------------------------------------ KV cache


class KVCache:
    """Preallocated K/V buffers for one request (see the module docstring)."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        capacity: int,
        inplace: bool,
        dtype=np.float32,
    ):
        self.layers, self.batch, self.heads, self.head_dim = layers, batch, heads, head_dim
        self.capacity = capacity
        self.inplace = inplace
        self.dtype = np.dtype(dtype)
        size = batch * heads * capacity * head_dim
        copies = 1 if inplace else 2
        self.buffers = [[np.zeros(size, dtype=self.dtype) for _ in range(2 * layers)] for _ in range(copies)]
        self.current = 0  # ping-pong: which copy holds past
        self.length = 0
        self.binding = None  # in place: the decode step's IOBinding, made once per request
        self.step_logits: np.ndarray | None = None  # in place: the decode step's logits buffer

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for copy in self.buffers for b in copy)

    def names(self):
        for layer in range(self.layers):
            for kind_index, kind in enumerate(("key", "value")):
                yield 2 * layer + kind_index, f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}"

    def view(self, copy: int, index: int, length: int, batch: int | None = None, row: int = 0) -> np.ndarray:
        """A contiguous [B, H, length, D] view (ping-pong) or the whole [B, H, T, D] buffer row(s) (in place)."""
        batch = self.batch if batch is None else batch
        flat = self.buffers[copy][index]
        if self.inplace:
            per_row = self.heads * self.capacity * self.head_dim
            return flat[row * per_row : (row + batch) * per_row].reshape(
                batch, self.heads, self.capacity, self.head_dim
            )
        count = batch * self.heads * length * self.head_dim
        return flat[:count].reshape(batch, self.heads, length, self.head_dim)

    def swap(self) -> None:
        if not self.inplace:
            self.current = 1 - self.current


# --------------------------------------------------------------------------------------------------- runner


class DecoderRunner:
    """Runs one decoder graph step by step on caller-owned buffers (ORT IOBinding) or through plain `run`."""

    def __init__(self, bundle: Bundle, session, inplace: bool):
        self.bundle = bundle
        self.session = session
        self.inplace = inplace
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.vocab = bundle.limits["vocab_size"]
        self.binding = hasattr(session, "session") and hasattr(session.session, "io_binding")

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return KVCache(self.layers, batch, self.heads, self.head_dim, capacity, self.inplace)

    def _run(
        self,
        feeds: dict,
        cache: KVCache,
        past_len: int,
        new_len: int,
        batch: int,
        row: int,
        logits: np.ndarray,
    ) -> None:
        if not self.binding:
            for index, past, _ in cache.names():
                feeds[past] = np.ascontiguousarray(cache.view(cache.current, index, past_len, batch, row))
            outputs = self.session.run(feeds)
            logits[...] = outputs["logits"][:, -1, :]
            for index, _, present in cache.names():
                value = outputs[present]
                if cache.inplace:
                    cache.view(0, index, 0, batch, row)[...] = value
                else:
                    cache.view(1 - cache.current, index, past_len + new_len, batch, row)[...] = value
            cache.swap()
            return
        # feeds were built here from validated prompts (ids inside the vocabulary, lengths inside the positions)
        if cache.inplace and batch == cache.batch and logits is cache.step_logits:
            # in-place decode: the KV buffers and the logits buffer never move, so their bindings are made once
            # per request and only the four small inputs are rebound each step
            if cache.binding is None:
                cache.binding = self._bind_inplace(cache, batch, row, logits)
            for name, value in feeds.items():
                cache.binding.bind_cpu_input(name, value)
            self.session.session.run_with_iobinding(cache.binding)
            return
        io = self.session.session.io_binding()
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        dtype = cache.dtype
        for index, past, present in cache.names():
            if cache.inplace:
                buffer = cache.view(0, index, 0, batch, row)
                io.bind_input(past, "cpu", 0, dtype, list(buffer.shape), buffer.ctypes.data)
                io.bind_output(present, "cpu", 0, dtype, list(buffer.shape), buffer.ctypes.data)
            else:
                src = cache.view(cache.current, index, past_len, batch, row)
                dst = cache.view(1 - cache.current, index, past_len + new_len, batch, row)
                io.bind_input(past, "cpu", 0, dtype, list(src.shape), src.ctypes.data)
                io.bind_output(present, "cpu", 0, dtype, list(dst.shape), dst.ctypes.data)
        out = logits.reshape(batch, 1, self.vocab)
        io.bind_output("logits", "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        self.session.session.run_with_iobinding(io)
        cache.swap()

    def _bind_inplace(self, cache: KVCache, batch: int, row: int, logits: np.ndarray):
        io = self.session.session.io_binding()
        for index, past, present in cache.names():
            buffer = cache.view(0, index, 0, batch, row)
            io.bind_input(past, "cpu", 0, cache.dtype, list(buffer.shape), buffer.ctypes.data)
            io.bind_output(present, "cpu", 0, cache.dtype, list(buffer.shape), buffer.ctypes.data)
        out = logits.reshape(batch, 1, self.vocab)
        io.bind_output("logits", "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        return io

    def prefill(self, prompts: list[list[int]], cache: KVCache, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Run the prompts; returns (logits [B, V], attention mask [B, P]) — the mask is None in place."""
        batch = len(prompts)
        logits = np.empty((batch, self.vocab), dtype=np.float32)
        if self.inplace:
            # GQA attends [0, seqlens_k]: each row is prefilled alone into its slice of the buffers (no padding).
            for row, ids in enumerate(prompts):
                n = len(ids)
                feeds = {
                    "input_ids": np.asarray([ids], dtype=np.int64),
                    "position_ids": np.arange(n, dtype=np.int64)[None],
                    "seqlens_k": np.array([n - 1], dtype=np.int32),
                    "total_sequence_length": np.array(n, dtype=np.int32),
                }
                self._run(feeds, cache, 0, n, 1, row, logits[row : row + 1])
            return logits, None
        width = max(len(ids) for ids in prompts)
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = ids
            mask[row, width - len(ids) :] = 1
        positions = np.clip(mask.cumsum(-1) - 1, 0, None).astype(np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        self._run(feeds, cache, 0, width, batch, 0, logits)
        cache.length = width
        return logits, mask

    def decode(
        self, tokens: np.ndarray, lengths: np.ndarray, cache: KVCache, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One step for every row. `lengths` = valid tokens per row before this step."""
        batch = len(tokens)
        ids = np.asarray(tokens, dtype=np.int64).reshape(batch, 1)
        if self.inplace:
            if cache.step_logits is None:
                cache.step_logits = np.empty((batch, self.vocab), dtype=np.float32)
            logits = cache.step_logits
            feeds = {
                "input_ids": ids,
                "position_ids": lengths.astype(np.int64).reshape(batch, 1),
                "seqlens_k": lengths.astype(np.int32),
                "total_sequence_length": np.array(int(lengths.max()) + 1, dtype=np.int32),
            }
            self._run(feeds, cache, cache.capacity, 1, batch, 0, logits)
            return logits.copy(), None
        logits = np.empty((batch, self.vocab), dtype=np.float32)
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": (mask.sum(-1, keepdims=True) - 1).astype(np.int64),
        }
        self._run(feeds, cache, cache.length, 1, batch, 0, logits)
        cache.length += 1
        return logits, mask


# ---------------------------------------------------------------------------------------------- generation


@dataclass
class Token:
    row: int  # which prompt of the batch
    id: int
    text: str  # text this token completes ("" while a multi-byte character is incomplete)
    index: int  # 0-based among the new tokens of this row
    finish: str | None = None  # "eos", "stop" or "length" on a row's last token


@dataclass
class Completion:
    prompt: str | None
    ids: list[int]
    text: str
    finish: str
    prompt_tokens: int
    stats: dict = field(default_factory=dict)


class Generator:
    """A GPT-2 bundle ready to generate: session, tokenizer and the decoding loop.

    gen = Generator("bundles/gpt2-generate")
    for token in gen.stream("The list", max_new_tokens=32): print(token.text, end="")
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        backend: str = "ort-cpu",
        variant: str | None = None,
        threads: int | None = None,
        kv: str = "auto",
    ):
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        if not bundle.is_decoder:
            raise UserError(
                f"{bundle.path} is a {bundle.task} bundle; generation needs a GPT-2 bundle "
                "(`trtpipe export gpt2 --task generate`)"
            )
        if kv not in ("auto", "inplace", "pingpong"):
            raise UserError(f"kv must be auto, inplace or pingpong (got {kv!r})")
        self.bundle = bundle
        base = variant or "fp32"
        inplace_name = "kv-inplace" if base == "fp32" else f"{base}.kv-inplace"
        self.inplace = backend == "ort-cpu" and kv != "pingpong" and inplace_name in bundle.variants
        if kv == "inplace" and not self.inplace:
            raise UserError(
                f"no {inplace_name} variant in {bundle.path} for backend {backend}; "
                f"create it with `trtpipe optimize {bundle.path} --precision {base}` or use kv=pingpong"
            )
        self.variant = inplace_name if self.inplace else base
        if backend == "trt":
            from .trt import TrtDecoder

            self.runner = TrtDecoder.from_bundle(bundle, variant=base)
        elif backend == "ort-cuda":
            from .cuda import OrtCudaDecoder

            self.runner = OrtCudaDecoder.from_bundle(bundle, variant=base, threads=threads)
        else:
            session = open_session(bundle, backend=backend, variant=self.variant, threads=threads)
            self.runner = DecoderRunner(bundle, session, self.inplace)
        self.encoder = TextEncoder(bundle)
        tok = bundle.manifest["tokenizer"]
        self.eos_id = tok.get("eos_id")
        self.pad_id = int(tok.get("pad_id", self.eos_id or 0))
        self.max_positions = bundle.limits["max_positions"]

    # -- inputs
    def encode(self, prompts) -> tuple[list[list[int]], list[str | None]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise UserError("give at least one prompt")
        ids, texts = [], []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                encoded = self.encoder.encode_prompt(prompt)
                texts.append(prompt)
            else:
                encoded = [int(t) for t in np.asarray(prompt).ravel()]
                texts.append(None)
                bad = [t for t in encoded if t < 0 or t >= self.runner.vocab]
                if bad:
                    raise UserError(
                        f"prompt {index + 1}: token id {bad[0]} is outside the vocabulary [0, {self.runner.vocab})"
                    )
            if not encoded:
                raise UserError(f"prompt {index + 1} is empty; give at least one token")
            ids.append(encoded)
        return ids, texts

    def check(self, prompts, max_new_tokens: int, truncate: bool = False) -> None:
        """Validate a request up front (UserError), before anything is printed or run."""
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
            raise UserError(f"--max-new-tokens must be ≥ 1 (got {max_new_tokens})")
        ids, _ = self.encode(prompts)
        self._fit(ids, int(max_new_tokens), truncate)

    def _fit(self, ids: list[list[int]], max_new_tokens: int, truncate: bool) -> list[list[int]]:
        room = self.max_positions - max_new_tokens
        if room < 1:
            raise UserError(
                f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in {self.max_positions} positions"
            )
        fitted = []
        for index, prompt in enumerate(ids):
            if len(prompt) > room:
                if not truncate:
                    raise UserError(
                        f"prompt {index + 1} is {len(prompt)} tokens; with --max-new-tokens {max_new_tokens} it must be "
                        f"≤ {room} (the model has {self.max_positions} positions); shorten it or pass --truncate to keep its tail"
                    )
                prompt = prompt[-room:]
            fitted.append(prompt)
        return fitted

    # -- the loop
    def stream(
        self,
        prompts,
        max_new_tokens: int = 64,
        sampling: Sampling | None = None,
        stop: list[str] | None = None,
        stop_ids: list[int] | None = None,
        truncate: bool = False,
        stats: dict | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[Token]:
        """Yield tokens as they are generated (rows of a batch interleaved, in step order). ignore_eos generates
        exactly max_new_tokens (benchmarks)."""
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
            raise UserError(f"--max-new-tokens must be ≥ 1 (got {max_new_tokens})")
        sampling = sampling or Sampling()
        stop = [s for s in (stop or []) if s]
        stop_ids = set(stop_ids or [])
        if self.eos_id is not None and not ignore_eos:
            stop_ids.add(int(self.eos_id))
        ids, _ = self.encode(prompts)
        ids = self._fit(ids, int(max_new_tokens), truncate)
        batch = len(ids)
        rng = np.random.default_rng(sampling.seed)
        capacity = max(len(p) for p in ids) + int(max_new_tokens)
        runner = self.runner
        cache = runner.new_cache(batch, capacity)
        history = [np.asarray(p, dtype=np.int64) for p in ids] if sampling.repetition_penalty != 1.0 else None
        streams = [TextStream(self.encoder) for _ in range(batch)]
        texts = [""] * batch
        held = [""] * batch  # text withheld because it may begin a stop string
        done = np.zeros(batch, dtype=bool)
        lengths = np.array([len(p) for p in ids], dtype=np.int64)
        started = time.perf_counter()
        logits, mask = runner.prefill(ids, cache, self.pad_id)
        step_times: list[float] = []
        if stats is not None:
            stats.update(
                ttft_s=time.perf_counter() - started,
                kv_bytes=cache.nbytes,
                prompt_tokens=lengths.tolist(),
                step_s=step_times,
                kv=("inplace" if cache.inplace else "pingpong"),
                variant=self.variant,
            )
        for step in range(int(max_new_tokens)):
            next_ids = sample_next(logits, sampling, rng, history)
            last_step = step == max_new_tokens - 1
            for row in range(batch):
                if done[row]:
                    continue
                token = int(next_ids[row])
                finish = None
                if token in stop_ids:
                    finish = "eos"
                    delta, held[row] = held[row], ""
                else:
                    delta = streams[row].put(token)
                    pending = held[row] + delta
                    texts[row] += delta
                    cut = _find_stop(texts[row], stop)
                    if cut is not None:
                        finish = "stop"
                        emitted = len(texts[row]) - len(pending)
                        delta = texts[row][emitted:cut] if cut > emitted else ""
                        texts[row] = texts[row][:cut]
                        held[row] = ""
                    else:
                        keep = min(_stop_prefix_len(texts[row], stop), len(pending))
                        delta = pending[: len(pending) - keep] if keep else pending
                        held[row] = pending[len(pending) - keep :] if keep else ""
                if finish is None and last_step:
                    finish = "length"
                    delta += held[row]
                    held[row] = ""
                if finish is not None:
                    done[row] = True
                if history is not None:
                    history[row] = np.append(history[row], token)
                yield Token(row=row, id=token, text=delta, index=step, finish=finish)
            if done.all():
                break
            tick = time.perf_counter()
            feed = np.where(done, self.pad_id, next_ids)
            logits, mask = runner.decode(feed, lengths, cache, mask)
            lengths += 1
            step_times.append(time.perf_counter() - tick)

    def generate(
        self,
        prompts,
        max_new_tokens: int = 64,
        sampling: Sampling | None = None,
        stop: list[str] | None = None,
        stop_ids: list[int] | None = None,
        truncate: bool = False,
    ) -> list[Completion]:
        """Run to completion; one Completion per prompt (text, ids, finish reason, timing stats)."""
        texts_in = [prompts] if isinstance(prompts, str) else list(prompts)
        stats: dict = {}
        ids: list[list[int]] = [[] for _ in texts_in]
        pieces: list[list[str]] = [[] for _ in texts_in]
        finish = ["length"] * len(texts_in)
        for token in self.stream(prompts, max_new_tokens, sampling, stop, stop_ids, truncate, stats):
            ids[token.row].append(token.id)  # like transformers, the ids include an EOS that ended the row
            pieces[token.row].append(token.text)
            if token.finish:
                finish[token.row] = token.finish
        counts = stats.get("prompt_tokens", [0] * len(texts_in))
        return [
            Completion(
                prompt=p if isinstance(p, str) else None,
                ids=i,
                text="".join(t),
                finish=f,
                prompt_tokens=n,
                stats=stats,
            )
            for p, i, t, f, n in zip(texts_in, ids, pieces, finish, counts)
        ]


def _find_stop(text: str, stops: list[str]) -> int | None:
    cuts = [text.find(s) for s in stops if s in text]
    return min(cuts) if cuts else None


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string (held back from the stream)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


# ---------------------------------------------------------------------------------------------------- oracle


def generate_uncached(
    session,
    prompt_ids: list[int],
    max_new_tokens: int,
    layers: int,
    heads: int,
    head_dim: int,
    eos_id: int | None = None,
) -> list[int]:
    """The slow, obviously-correct greedy loop: the whole sequence through the graph every step, empty past."""
    ids = list(prompt_ids)
    new: list[int] = []
    for _ in range(max_new_tokens):
        n = len(ids)
        feeds = {
            "input_ids": np.asarray([ids], np.int64),
            "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None],
        }
        for layer in range(layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{layer}.{kind}"] = np.zeros((1, heads, 0, head_dim), np.float32)
        token = int(session.run(feeds)["logits"][0, -1].argmax())
        new.append(token)
        ids.append(token)
        if eos_id is not None and token == eos_id:
            break
    return new
