"""Encoders (every family in the spec table) → ONNX: one wrapper puts each task's output (and in-graph pooling
for embeddings) in the graph with Optimum's I/O names; a family without segment ids gets no token_type_ids."""

from __future__ import annotations

import torch

from ..models import ENCODER_INPUTS
from .inputs import Source
from .pooling import DEFAULT, pool


def input_names(source: Source) -> tuple[str, ...]:
    """The graph's inputs: token_type_ids only where the family (and this checkpoint) has segment embeddings."""
    return ENCODER_INPUTS if source.spec.has_token_types(source.config) else ENCODER_INPUTS[:2]


class EncoderForExport(torch.nn.Module):
    """Wraps a transformers encoder and returns the task's outputs in the bundle's order."""

    def __init__(self, model: torch.nn.Module, task: str, inputs=ENCODER_INPUTS, pooling: dict | None = None):
        super().__init__()
        self.model = model
        self.task = task
        self.inputs = tuple(inputs)
        self.pooling = pooling or DEFAULT

    def forward(self, *tensors):
        feeds = dict(zip(self.inputs, tensors))
        out = self.model(**feeds, return_dict=True)
        if self.task == "embed":
            hidden = out.last_hidden_state  # [B, S, C]
            return hidden, pool(hidden, feeds["attention_mask"], self.pooling)
        if self.task == "qa":
            return out.start_logits, out.end_logits
        return out.logits


def output_specs(source: Source) -> list[dict]:
    config = source.config
    task = source.task
    if task == "embed":
        return [
            {
                "name": "last_hidden_state",
                "dtype": "float32",
                "shape": ["batch", "sequence", config.hidden_size],
            },
            {
                "name": "sentence_embedding",
                "dtype": "float32",
                "shape": ["batch", config.hidden_size * len(source.info.get("pooling", DEFAULT)["modes"])],
            },
        ]
    if task == "qa":
        return [
            {"name": n, "dtype": "float32", "shape": ["batch", "sequence"]}
            for n in ("start_logits", "end_logits")
        ]
    if task == "classify":
        return [{"name": "logits", "dtype": "float32", "shape": ["batch", config.num_labels]}]
    if task == "ner":
        return [{"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", config.num_labels]}]
    return [{"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", config.vocab_size]}]


def input_specs(source: Source) -> list[dict]:
    return [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in input_names(source)]


def example_inputs(source: Source) -> tuple[torch.Tensor, ...]:
    """Two real sentences, one padded: tracing sees a real mask, not all-ones."""
    from .. import corpus

    texts = corpus.sample(2, split="train")
    enc = source.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    token_type_ids = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    tensors = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": token_type_ids,
    }
    return tuple(tensors[name] for name in input_names(source))


def wrapper_for(source: Source) -> EncoderForExport:
    """The module export traces and parity's reference runs: same inputs, same pooling."""
    return EncoderForExport(source.model, source.task, input_names(source), source.info.get("pooling")).eval()


def export_encoder(source: Source, path, opset: int) -> None:
    wrapper = wrapper_for(source)
    names = input_names(source)
    outputs = [spec["name"] for spec in output_specs(source)]
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    for spec in output_specs(source):
        dynamic[spec["name"]] = {i: d for i, d in enumerate(spec["shape"]) if isinstance(d, str)}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            example_inputs(source),
            str(path),
            input_names=list(names),
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
