"""Tokenization for the runtime: the `tokenizers` library (Rust, no torch), configured from the manifest."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

from .bundle import Bundle
from .errors import UserError


class TextTruncated(UserWarning):
    """A text (with its pair) was longer than the model's limit and was cut to fit (truncate=True)."""


@dataclass
class Batch:
    """A padded batch of encodings plus what postprocessing needs (offsets, which sequence each token is from)."""

    feeds: dict[str, np.ndarray]
    encodings: list  # tokenizers.Encoding, one per row
    lengths: list[int]


class TextEncoder:
    """Encodes texts for one bundle. Tokenizer objects are never reconfigured after creation (thread safety):
    each truncation setting gets its own instance."""

    def __init__(self, bundle: Bundle):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserError("the `tokenizers` package is missing: pip install trtpipe") from None
        self._cls = Tokenizer
        self.path = bundle.tokenizer_file()
        self.info = bundle.manifest["tokenizer"]
        if self.info.get("sha256"):
            bundle.verify_files({self.info["file"]: self.info["sha256"]}, "tokenizer", "re-export the bundle")
        self.max_length = bundle.max_length
        self.input_names = bundle.input_names()
        self._lock = threading.Lock()
        self._cache: dict[tuple, object] = {}
        self.plain = self._make()

    def _make(self, max_length: int | None = None, stride: int = 0, strategy: str = "longest_first"):
        try:
            tok = self._cls.from_file(str(self.path))
        except Exception as exc:
            raise UserError(
                f"tokenizer {self.path} could not be read ({exc}); re-export the bundle"
            ) from None
        tok.no_padding()
        tok.no_truncation()
        if max_length:
            tok.enable_truncation(max_length, stride=stride, strategy=strategy)
        return tok

    def _tokenizer(self, max_length: int | None, stride: int = 0, strategy: str = "longest_first"):
        if not max_length:
            return self.plain
        key = (max_length, stride, strategy)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._make(max_length, stride, strategy)
            return self._cache[key]

    @property
    def pad_id(self) -> int:
        return int(self.info.get("pad_id") or 0)

    @property
    def mask_id(self) -> int | None:
        return self.info.get("mask_id")

    def token_to_id(self, token: str) -> int | None:
        return self.plain.token_to_id(token)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.plain.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.plain.id_to_token(int(token_id))

    # ----------------------------------------------------------------------------------------------- encoders

    def encode(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        truncate: bool = False,
        max_length: int | None = None,
        quiet: bool = False,
    ) -> list:
        """Encode texts (and optional second segments) with special tokens; refuse over-long input unless truncating,
        which warns (TextTruncated) for each text it cuts — unless `quiet`, for callers that cut on purpose (parity,
        gates and benchmarks at a fixed sequence length)."""
        check_texts(texts)
        if pairs is not None:
            check_texts(pairs, what="text pair")
            if len(pairs) != len(texts):
                raise UserError(f"got {len(texts)} texts but {len(pairs)} text pairs; give one pair per text")
        limit = min(max_length or self.max_length, self.max_length)
        tok = self._tokenizer(limit) if truncate else self.plain
        items = list(zip(texts, pairs)) if pairs is not None else list(texts)
        encodings = tok.encode_batch(items, add_special_tokens=True)
        if not truncate:
            for index, enc in enumerate(encodings):
                if len(enc.ids) > limit:
                    raise UserError(
                        f"text {index + 1} is {len(enc.ids)} tokens, longer than the model's limit of {limit}; "
                        "shorten it",
                        switch=("truncate", "to cut it with a warning"),
                    )
            return encodings
        if quiet:
            return encodings
        # a truncated encoding is exactly `limit` long: only those are counted again, whole (with the pair)
        cut = [index for index, enc in enumerate(encodings) if len(enc.ids) >= limit]
        full = self.plain.encode_batch([items[i] for i in cut], add_special_tokens=True) if cut else []
        for index, enc in zip(cut, full):
            if len(enc.ids) > limit:
                what = "and its pair have" if pairs is not None else "has"
                warnings.warn(
                    f"text {index + 1} {what} {len(enc.ids)} tokens; truncated to {limit}",
                    TextTruncated,
                    stacklevel=3,
                )
        return encodings

    def encode_windows(
        self, question: str, context: str, max_length: int | None = None, stride: int = 128
    ) -> list:
        """Question + context in overlapping windows (the context is split, the question repeated) for long QA."""
        check_texts([question], what="question")
        check_texts([context], what="context")
        limit = min(max_length or self.max_length, self.max_length)
        question_len = len(self.plain.encode(question, add_special_tokens=False).ids)
        if question_len + 8 > limit:
            raise UserError(
                f"the question is {question_len} tokens; it must fit in {limit - 8} tokens with the context"
            )
        stride = max(0, min(stride, limit - question_len - 8))
        tok = self._tokenizer(limit, stride=stride, strategy="only_second")
        first = tok.encode(question, context, add_special_tokens=True)
        return [first, *first.overflowing]

    def collate(self, encodings: list, pad_to: int | None = None) -> Batch:
        """Pad a group of encodings to its longest member (dynamic padding), or to `pad_to`."""
        lengths = [len(e.ids) for e in encodings]
        width = max(max(lengths), pad_to or 0)
        rows = len(encodings)
        ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = lengths[row]
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = types
        return Batch(feeds, encodings, lengths)

    # ---------------------------------------------------------------------------------------------- decoders

    def encode_prompt(self, text: str) -> list[int]:
        check_texts([text], what="prompt")
        return list(self.plain.encode(text, add_special_tokens=False).ids)


def exact_span(text: str, start: int, end: int) -> tuple[int, int]:
    """A token span as characters of the text a person reads: tokenizers that keep the space before a word
    (SentencePiece's "▁") lose it here, and a combining mark, variation selector or joiner the normaliser left
    outside the span (café as e + U+0301, ❤️, 👩‍💻) joins the character it belongs to."""
    import unicodedata

    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    while end < len(text) and (unicodedata.combining(text[end]) or text[end] in "\ufe0e\ufe0f\u200d"):
        end += 1
        if text[end - 1] == "\u200d" and end < len(text):
            end += 1  # a zero-width joiner binds the next character too
    return start, end


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


class StopText:
    """One row's new text as it streams: detokenised incrementally (`TextStream`), cut at the first stop string,
    and held back while its tail could still begin one. `push` returns (text to emit, finish reason or None)."""

    def __init__(self, encoder: TextEncoder, stop: list[str], stop_ids: set[int]):
        self.stream = TextStream(encoder)
        self.stop = stop
        self.stop_ids = stop_ids
        self.text = ""
        self.held = ""  # text withheld because it may begin a stop string

    def push(self, token: int, last: bool) -> tuple[str, str | None]:
        finish = None
        if token in self.stop_ids:
            finish = "eos"
            delta, self.held = self.held, ""
        else:
            delta = self.stream.put(token)
            pending = self.held + delta
            self.text += delta
            cut = _find_stop(self.text, self.stop)
            if cut is not None:
                finish = "stop"
                emitted = len(self.text) - len(pending)
                delta = self.text[emitted:cut] if cut > emitted else ""
                self.text = self.text[:cut]
                self.held = ""
            else:
                keep = min(_stop_prefix_len(self.text, self.stop), len(pending))
                delta = pending[: len(pending) - keep] if keep else pending
                self.held = pending[len(pending) - keep :] if keep else ""
        if finish is None and last:
            finish = "length"
            delta += self.held
            self.held = ""
        return delta, finish


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


def check_texts(texts, what: str = "text") -> None:
    if isinstance(texts, str):
        raise UserError(f"expected a list of {what}s, got a single string")
    if not texts:
        raise UserError(f"no {what} given; pass at least one")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"{what} {index + 1} is {type(text).__name__}, not a string")
        if not text.strip():
            raise UserError(f"{what} {index + 1} is empty; pass non-empty text")


def length_buckets(
    lengths: list[int], batch_size: int, max_waste: float = 0.2, window: int | None = None
) -> list[list[int]]:
    """Group indices into batches of similar length, so that padding each batch to its longest member costs little:
    sort by length inside windows of `window` items (bounded memory for streams, order roughly kept), then cut
    wherever a batch would exceed `batch_size` rows or waste more than `max_waste` of its padded tokens."""
    if batch_size < 1:
        raise UserError(f"batch size must be ≥ 1 (got {batch_size})")
    window = window or batch_size * 16
    order = list(range(len(lengths)))
    groups: list[list[int]] = []
    for start in range(0, len(order), window):
        batch: list[int] = []
        tokens = 0
        for index in sorted(order[start : start + window], key=lambda i: lengths[i]):
            longest = max(lengths[index], 1)  # sorted: the newcomer is the longest
            waste = 1 - (tokens + lengths[index]) / ((len(batch) + 1) * longest)
            if batch and (len(batch) == batch_size or waste > max_waste):
                groups.append(batch)
                batch, tokens = [], 0
            batch.append(index)
            tokens += lengths[index]
        if batch:
            groups.append(batch)
    return groups
