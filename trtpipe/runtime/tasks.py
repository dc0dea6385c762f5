"""Encoder tasks, text in → answer out: tokenize → length-bucketed batches → session.run → postprocess.

classify (labels + scores), ner (entity spans with character offsets, BIO aggregation over words), qa (answer
span + score; long contexts in stride windows), fill-mask (top-k fills), embed (normalised sentence embeddings).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..models import ENCODER_TASKS
from .bundle import Bundle
from .errors import UserError, with_article
from .session import Session, open_session
from .text import TextEncoder, exact_span, length_buckets


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    shifted = x - x.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def check_finite(outputs: dict[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
            raise UserError(
                f"output {name!r} has {nan} NaN and {inf} Inf values; try the fp32 variant "
                "(fp16 overflow?) and run `trtpipe parity` on the bundle"
            )


@dataclass
class Pipeline:
    """A bundle's task pipeline over one Session. Safe to call from several threads."""

    bundle: Bundle
    session: Session
    encoder: TextEncoder
    check_outputs: bool = False
    padding: str = "bucketed"  # or "fixed" (benchmark baseline)
    batch_times: list | None = None  # seconds per batch, when a benchmark asks for them

    @property
    def task(self) -> str:
        return self.bundle.task

    def close(self) -> None:
        self.session.close()

    def __call__(self, inputs=None, **kwargs):
        """As transformers pipelines are called: one text (a str) gives one answer, a list of texts a list. QA takes
        question= (or the question first) and context=: a str gives one answer, a list a list; or a {"question",
        "context"} dict, or a list of them."""
        if self.task == "qa":
            return self._qa_call(inputs, **kwargs)
        handlers = {
            "embed": self.embed,
            "classify": self.classify,
            "ner": self.ner,
            "fill-mask": self.fill_mask,
        }
        if self.task not in handlers:
            raise UserError(f"bundle task {self.task!r} is not an encoder task; use trtpipe.runtime.generate")
        if inputs is None:
            raise UserError(f'{self.task} needs a text or a list of texts, e.g. pipe("one sentence")')
        if not isinstance(inputs, str):
            return handlers[self.task](inputs, **kwargs)
        if isinstance(kwargs.get("text_pairs"), str):
            kwargs["text_pairs"] = [kwargs["text_pairs"]]
        return handlers[self.task]([inputs], **kwargs)[0]

    def _qa_call(self, inputs, **kwargs):
        if inputs is None:
            return self.qa(**kwargs)
        if isinstance(inputs, dict):
            return self.qa(**inputs, **kwargs)
        if isinstance(inputs, str) or (
            isinstance(inputs, (list, tuple)) and inputs and all(isinstance(item, str) for item in inputs)
        ):
            return self.qa(
                question=inputs, **kwargs
            )  # the question(s), positionally, as transformers takes them
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(item, dict) for item in inputs):
            questions = [item.get("question") for item in inputs]
            contexts = [item.get("context") for item in inputs]
            if None in questions or None in contexts:
                raise UserError('each question answering input needs a "question" and a "context"')
            return self.qa(question=questions, context=contexts, **kwargs)
        raise UserError(
            "question answering takes question= and context= (or a {'question': …, 'context': …} dict, or a list "
            f"of them), not {type(inputs).__name__}"
        )

    # -------------------------------------------------------------------------------------------- plumbing

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(feeds)
        if self.check_outputs:
            check_finite(outputs)
        return outputs

    def _batched(self, encodings: list, batch_size: int):
        """Yield (indices, batch, outputs) over length-bucketed batches padded to their own longest member.
        (`padding="fixed"` instead keeps input order and pads every batch to the max length: the naive baseline.)"""
        lengths = [len(e.ids) for e in encodings]
        if self.padding == "fixed":
            groups = [
                list(range(i, min(i + batch_size, len(encodings))))
                for i in range(0, len(encodings), batch_size)
            ]
        else:
            groups = length_buckets(lengths, batch_size)
        for group in groups:
            started = time.perf_counter()
            batch = self.encoder.collate(
                [encodings[i] for i in group],
                pad_to=self.bundle.max_length if self.padding == "fixed" else None,
            )
            outputs = self._run(batch.feeds)
            if self.batch_times is not None:
                self.batch_times.append(time.perf_counter() - started)
            yield group, batch, outputs

    def _require(self, task: str) -> None:
        if self.task != task:
            raise UserError(
                f"bundle {self.bundle.path} was exported for task {self.task!r}, not {task!r}; "
                f"export it with `trtpipe export MODEL --task {task}`"
            )

    # ----------------------------------------------------------------------------------------------- tasks

    def embed(self, texts: list[str], batch_size: int = 32, truncate: bool = False) -> np.ndarray:
        """Sentence embeddings [N, C], mean-pooled and L2-normalised inside the graph."""
        self._require("embed")
        encodings = self.encoder.encode(texts, truncate=truncate)
        result: np.ndarray | None = None
        for group, _, outputs in self._batched(encodings, batch_size):
            emb = outputs["sentence_embedding"].astype(np.float32, copy=False)
            if result is None:
                result = np.empty((len(texts), emb.shape[-1]), dtype=np.float32)
            result[group] = emb
        return result

    def classify(
        self,
        texts: list[str],
        text_pairs: list[str] | None = None,
        top_k: int | None = 1,
        batch_size: int = 32,
        truncate: bool = False,
    ) -> list[dict]:
        """Per text: {"label", "score", "scores": {label: probability}} (top_k=None keeps only the best)."""
        self._require("classify")
        encodings = self.encoder.encode(texts, text_pairs, truncate=truncate)
        labels = self.bundle.labels
        multi = self.bundle.manifest.get("problem_type") == "multi_label_classification"
        results: list[dict] = [{}] * len(texts)
        for group, _, outputs in self._batched(encodings, batch_size):
            logits = outputs["logits"].astype(np.float32)
            probs = 1.0 / (1.0 + np.exp(-logits)) if multi else softmax(logits)
            for row, index in enumerate(group):
                order = np.argsort(-probs[row])
                ranked = [(labels.get(int(i), f"LABEL_{int(i)}"), float(probs[row, i])) for i in order]
                keep = ranked[: top_k or 1]
                results[index] = {
                    "label": keep[0][0],
                    "score": keep[0][1],
                    "scores": dict(keep if top_k else ranked),
                }
        return results

    def ner(self, texts: list[str], batch_size: int = 32, truncate: bool = False) -> list[list[dict]]:
        """Per text: entities [{"entity", "score", "word", "start", "end"}] with character offsets into the text."""
        self._require("ner")
        encodings = self.encoder.encode(texts, truncate=truncate)
        labels = self.bundle.labels
        results: list[list[dict]] = [[] for _ in texts]
        for group, _, outputs in self._batched(encodings, batch_size):
            probs = softmax(outputs["logits"])
            for row, index in enumerate(group):
                results[index] = _aggregate_entities(texts[index], encodings[index], probs[row], labels)
        return results

    def fill_mask(
        self, texts: list[str], top_k: int = 5, batch_size: int = 32, truncate: bool = False
    ) -> list[list]:
        """Per text: for each mask token, the top_k fills [{"token", "token_str", "score", "sequence"}]."""
        self._require("fill-mask")
        mask_id = self.encoder.mask_id
        mask_token = self.encoder.info.get("mask_token", "[MASK]")
        if mask_id is None:
            raise UserError("this bundle's tokenizer has no mask token; fill-mask needs one")
        if top_k < 1:
            raise UserError(f"top_k must be ≥ 1 (got {top_k})")
        for index, text in enumerate(texts):
            if isinstance(text, str) and mask_token not in text:
                raise UserError(
                    f"text {index + 1} has no {mask_token} token to fill; write e.g. 'Paris is the {mask_token} of France.'"
                )
        encodings = self.encoder.encode(texts, truncate=truncate)
        results: list[list] = [[] for _ in texts]
        for group, _, outputs in self._batched(encodings, batch_size):
            logits = outputs["logits"]
            for row, index in enumerate(group):
                ids = np.asarray(encodings[index].ids)
                positions = np.flatnonzero(ids == mask_id)
                per_mask = []
                for pos in positions:
                    probs = softmax(logits[row, pos])
                    best = np.argsort(-probs)[:top_k]
                    fills = []
                    for token in best:
                        filled = ids.copy()
                        filled[pos] = token
                        fills.append(
                            {
                                "token": int(token),
                                "token_str": self.encoder.decode([token]).strip()
                                or (self.encoder.id_to_token(token) or ""),
                                "score": float(probs[token]),
                                "sequence": self.encoder.decode(filled),
                            }
                        )
                    per_mask.append(fills)
                results[index] = per_mask[0] if len(per_mask) == 1 else per_mask
        return results

    def qa(
        self,
        question: str | list[str] | None = None,
        context: str | list[str] | None = None,
        max_answer_tokens: int = 30,
        stride: int = 128,
        batch_size: int = 16,
        **_: object,
    ) -> dict | list[dict]:
        """Extractive QA: {"answer", "score", "start", "end"}; contexts longer than the model run in windows."""
        self._require("qa")
        if question is None or context is None:
            raise UserError("question answering needs a question and a context: qa(question=Q, context=C)")
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        contexts = [context] * len(questions) if isinstance(context, str) else list(context)
        if len(questions) != len(contexts):
            raise UserError(f"got {len(questions)} questions but {len(contexts)} contexts")
        answers = [
            self._answer(q, c, max_answer_tokens, stride, batch_size) for q, c in zip(questions, contexts)
        ]
        return answers[0] if single else answers

    def _answer(
        self, question: str, context: str, max_answer_tokens: int, stride: int, batch_size: int
    ) -> dict:
        windows = self.encoder.encode_windows(question, context, stride=stride)
        best = {"answer": "", "score": 0.0, "start": 0, "end": 0}
        for group, _, outputs in self._batched(windows, batch_size):
            for row, index in enumerate(group):
                enc = windows[index]
                candidate = _best_span(
                    enc, outputs["start_logits"][row], outputs["end_logits"][row], max_answer_tokens
                )
                if candidate and candidate[0] > best["score"]:
                    score, start, end = candidate
                    start, end = exact_span(context, start, end)
                    best = {"answer": context[start:end], "score": score, "start": start, "end": end}
        return best


def _best_span(encoding, start_logits: np.ndarray, end_logits: np.ndarray, max_tokens: int):
    """Best (score, char_start, char_end) inside the context part of one window, as HF's QA pipeline scores it."""
    sequence_ids = encoding.sequence_ids
    n = len(encoding.ids)
    context = np.array([sid == 1 for sid in sequence_ids[:n]], dtype=bool)
    if not context.any():
        return None
    start = np.where(context, start_logits[:n].astype(np.float32), -np.inf)
    end = np.where(context, end_logits[:n].astype(np.float32), -np.inf)
    start_p = softmax(start)
    end_p = softmax(end)
    scores = np.triu(np.outer(start_p, end_p))  # end ≥ start
    scores = np.tril(scores, max_tokens - 1)  # at most max_tokens long
    flat = int(np.argmax(scores))
    s, e = divmod(flat, n)
    score = float(scores[s, e])
    if not (context[s] and context[e]):
        return None
    offsets = encoding.offsets
    return score, int(offsets[s][0]), int(offsets[e][1])


def _split_label(label: str) -> tuple[str, str]:
    if label == "O" or label is None:
        return "O", ""
    if len(label) > 2 and label[1] == "-" and label[0] in "BIES":
        return label[0], label[2:]
    return "I", label


def _aggregate_entities(text: str, encoding, probs: np.ndarray, labels: dict[int, str]) -> list[dict]:
    """Word-level BIO aggregation: each word takes its first sub-token's label; B- starts an entity, I- of the same
    type continues it, O ends it. Score = mean of the words' label probabilities."""
    word_ids = encoding.word_ids
    offsets = encoding.offsets
    special = encoding.special_tokens_mask
    words: list[tuple[str, str, float, int, int]] = []  # (prefix, type, score, start, end)
    last_word = None
    for pos, word in enumerate(word_ids):
        if special[pos] or word is None:
            last_word = None
            continue
        if word == last_word:
            prefix, kind, score, start, _ = words[-1]
            words[-1] = (prefix, kind, score, start, int(offsets[pos][1]))
            continue
        last_word = word
        label_id = int(np.argmax(probs[pos]))
        prefix, kind = _split_label(labels.get(label_id, f"LABEL_{label_id}"))
        words.append((prefix, kind, float(probs[pos, label_id]), int(offsets[pos][0]), int(offsets[pos][1])))
    entities: list[dict] = []
    current: dict | None = None
    for prefix, kind, score, start, end in words:
        if prefix == "O":
            current = None
            continue
        if current is not None and prefix in ("I", "E") and kind == current["entity"]:
            current["end"] = end
            current["_scores"].append(score)
            continue
        current = {"entity": kind, "start": start, "end": end, "_scores": [score]}
        entities.append(current)
    for entity in entities:
        entity["start"], entity["end"] = exact_span(text, entity["start"], entity["end"])
        scores = entity.pop("_scores")
        entity["score"] = float(sum(scores) / len(scores))
        entity["word"] = text[entity["start"] : entity["end"]]
    return [{k: e[k] for k in ("entity", "score", "word", "start", "end")} for e in entities]


def load_pipeline(
    bundle: Bundle | str | os.PathLike,
    backend: str = "ort-cpu",
    variant: str | None = None,
    threads: int | None = None,
    check_outputs: bool = False,
) -> Pipeline:
    """Open a bundle's task pipeline: `load_pipeline("bundles/minilm-embed").embed(["hello"])`."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if bundle.task not in ENCODER_TASKS:
        raise UserError(
            f"bundle {bundle.path} is {with_article(bundle.task)} model; use `trtpipe generate` / trtpipe.runtime.generate"
        )
    if bundle.random_weights:
        warnings.warn(
            f"{bundle.name}: random weights — outputs are meaningless (speed and parity only)", stacklevel=2
        )
    elif bundle.random_head:
        warnings.warn(
            f"{bundle.name}: the {bundle.task} head is randomly initialised (the checkpoint has none) — its "
            "answers are meaningless until the model is fine-tuned for the task",
            stacklevel=2,
        )
    session = open_session(bundle, backend=backend, variant=variant, threads=threads)
    return Pipeline(bundle, session, TextEncoder(bundle), check_outputs=check_outputs)


__all__ = ["Pipeline", "load_pipeline", "softmax", "check_finite"]
