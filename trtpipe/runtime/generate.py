"""Generation with a GPT-2 bundle: prefill once, then one token per step; greedy or sampled; batched; streamed.

`Generator` is the loop; the runner it drives (`open_decoder`: ONNX Runtime on the CPU with host KV buffers, on
CUDA, or a TensorRT engine) owns the graph calls, and `kv.py` owns the feeds and buffers. The slow,
obviously-correct oracle (`generate_uncached`: the full sequence every step, no cache) stays here too; tests hold
the fast paths to it token for token.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from . import kv as kv_layout
from .bundle import Bundle
from .errors import UserError, with_article
from .sampling import Sampling, sample_next
from .session import open_decoder
from .text import StopText, TextEncoder


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
    # leading prompt tokens cut by truncate=True (then `prompt` is the tail that ran)
    prompt_tokens_dropped: int = 0


class PromptTruncated(UserWarning):
    """A prompt was cut to its tail to leave room for the new tokens (truncate=True)."""


@dataclass
class Prompts:
    """A request's prompts as they will run: token ids after truncation, the text those ids spell (None for id
    prompts), and how many leading tokens truncation dropped from each."""

    ids: list[list[int]]
    texts: list[str | None]
    dropped: list[int]
    messages: list[str]  # one warning per truncated prompt


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
        prefill_backend: str | None = None,
        spin: str | None = None,
        kv_cache: str = "fp32",
    ):
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        if not bundle.is_decoder:
            raise UserError(
                f"{bundle.path} is {with_article(bundle.task)} bundle; generation needs a GPT-2 bundle "
                "(`trtpipe export gpt2 --task generate`)"
            )
        self.bundle = bundle
        self.runner, self.variant = open_decoder(
            bundle, backend, variant, threads, kv, prefill_backend, spin, kv_cache
        )
        self.prefill_backend = prefill_backend if getattr(self.runner, "prefiller", None) else None
        self.inplace = self.runner.inplace
        self.encoder = TextEncoder(bundle)
        tok = bundle.manifest["tokenizer"]
        self.eos_id = tok.get("eos_id")
        self.pad_id = int(tok.get("pad_id", self.eos_id or 0))
        self.model_positions = bundle.limits["max_positions"]
        # prompt + new tokens: the model's positions, or fewer with export's --max-length
        self.max_positions = bundle.max_length

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

    def check(self, prompts, max_new_tokens: int, truncate: bool = False) -> Prompts:
        """Validate a request up front (UserError), before anything is printed or run; the prompts as they will run."""
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be ≥ 1 (got {max_new_tokens})", fields="max_new_tokens")
        return self.prepare(prompts, int(max_new_tokens), truncate)

    def prepare(self, prompts, max_new_tokens: int, truncate: bool, positions: int | None = None) -> Prompts:
        """Encode and fit the prompts (into `positions`, default the model's); a truncated text prompt is replaced
        by the text of the tail it keeps."""
        ids, texts = self.encode(prompts)
        fitted = self.fit(ids, max_new_tokens, truncate, positions=positions)
        dropped = [len(given) - len(kept) for given, kept in zip(ids, fitted)]
        messages = [
            f"prompt {index + 1} has {len(given)} tokens; truncated to {len(kept)} "
            f"(its first {cut} dropped to leave room for {max_new_tokens} new tokens)"
            for index, (given, kept, cut) in enumerate(zip(ids, fitted, dropped))
            if cut
        ]
        texts = [
            self.encoder.decode(kept, skip_special_tokens=False) if cut and text is not None else text
            for text, kept, cut in zip(texts, fitted, dropped)
        ]
        return Prompts(fitted, texts, dropped, messages)

    def fit(
        self, ids: list[list[int]], max_new_tokens: int, truncate: bool, positions: int | None = None
    ) -> list[list[int]]:
        """The prompts, each checked to leave room for max_new_tokens in `positions` (default: the model's); a
        longer one is a UserError, or keeps its tail with `truncate`."""
        positions = positions or self.max_positions
        room = positions - max_new_tokens
        if room < 1:
            raise UserError(
                f"max_new_tokens {max_new_tokens} leaves no room for a prompt in {positions} positions",
                fields="max_new_tokens",
            )
        fitted = []
        for index, prompt in enumerate(ids):
            if len(prompt) > room:
                if not truncate:
                    raise UserError(
                        f"prompt {index + 1} is {len(prompt)} tokens; with max_new_tokens {max_new_tokens} it must "
                        f"be ≤ {room} ({_positions(positions, self.max_positions, self.model_positions)}); "
                        "shorten it",
                        fields=("max_new_tokens", "max_length"),
                        switch=("truncate", "to keep its tail"),
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
        exactly max_new_tokens (benchmarks). `prompts` may be what `check` returned (then the text is not tokenized again)."""
        prepared = self._prepared(prompts, max_new_tokens, truncate)
        sampling = sampling or Sampling()
        stop = [s for s in (stop or []) if s]
        stop_ids = set(stop_ids or [])
        if self.eos_id is not None and not ignore_eos:
            stop_ids.add(int(self.eos_id))
        ids = prepared.ids
        batch = len(ids)
        rng = np.random.default_rng(sampling.seed)
        capacity = max(len(p) for p in ids) + int(max_new_tokens)
        runner = self.runner
        cache = runner.new_cache(batch, capacity)
        history = History(ids, capacity) if sampling.repetition_penalty != 1.0 else None
        texts = [StopText(self.encoder, stop, stop_ids) for _ in range(batch)]
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
                prompt_tokens_dropped=prepared.dropped,
                step_s=step_times,
                kv=("inplace" if cache.inplace else "pingpong"),
                variant=self.variant,
            )
        for step in range(int(max_new_tokens)):
            next_ids = sample_next(logits, sampling, rng, None if history is None else history.rows())
            last_step = step == max_new_tokens - 1
            for row in range(batch):
                if done[row]:
                    continue
                token = int(next_ids[row])
                delta, finish = texts[row].push(token, last_step)
                if finish is not None:
                    done[row] = True
                if history is not None:
                    history.add(row, token)
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
        """Run to completion; one Completion per prompt (text, ids, finish reason, timing stats). A prompt cut by
        truncate=True warns (PromptTruncated) and its Completion holds the kept tail and the count dropped."""
        prepared = self._prepared(prompts, max_new_tokens, truncate)
        texts_in = prepared.texts
        stats: dict = {}
        ids: list[list[int]] = [[] for _ in texts_in]
        pieces: list[list[str]] = [[] for _ in texts_in]
        finish = ["length"] * len(texts_in)
        for token in self.stream(prepared, max_new_tokens, sampling, stop, stop_ids, truncate, stats):
            ids[token.row].append(token.id)  # like transformers, the ids include an EOS that ended the row
            pieces[token.row].append(token.text)
            if token.finish:
                finish[token.row] = token.finish
        counts = stats.get("prompt_tokens", [0] * len(texts_in))
        return [
            Completion(p, i, "".join(t), f, n, stats, prompt_tokens_dropped=d)
            for p, i, t, f, n, d in zip(texts_in, ids, pieces, finish, counts, prepared.dropped)
        ]

    def _prepared(self, prompts, max_new_tokens: int, truncate: bool) -> Prompts:
        """`check`'s result as given (re-fitted, in case max_new_tokens grew), or the prompts prepared here, with a
        PromptTruncated warning for each one cut."""
        if isinstance(prompts, Prompts):
            self.check(prompts.ids, max_new_tokens)
            return prompts
        prepared = self.check(prompts, max_new_tokens, truncate)
        for message in prepared.messages:
            warnings.warn(message, PromptTruncated, stacklevel=3)
        return prepared


def _positions(positions: int, limit: int, model: int) -> str:
    if positions == limit:
        if limit == model:
            return f"the model has {model} positions"
        return f"the bundle takes {limit} tokens, exported with max_length {limit}; the model has {model} positions"
    return f"a slot holds {positions} positions; the bundle takes {limit}"


class History:
    """Every row's prompt and new tokens (for the repetition penalty), in one buffer allocated once per request at
    its capacity and written in place: no step copies a growing history."""

    def __init__(self, prompts: list[list[int]], capacity: int):
        self.ids = np.zeros((len(prompts), capacity), dtype=np.int64)
        self.length = np.array([len(p) for p in prompts], dtype=np.int64)
        for row, prompt in enumerate(prompts):
            self.ids[row, : len(prompt)] = prompt

    def add(self, row: int, token: int) -> None:
        self.ids[row, self.length[row]] = token
        self.length[row] += 1

    def rows(self) -> list[np.ndarray]:
        return [self.ids[row, :length] for row, length in enumerate(self.length)]


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
        feeds = kv_layout.full_sequence(ids, layers, heads, head_dim)
        token = int(session.run(feeds)["logits"][0, -1].argmax())
        new.append(token)
        ids.append(token)
        if eos_id is not None and token == eos_id:
            break
    return new
