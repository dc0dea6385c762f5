"""BERT / ALBERT encoders → ONNX: one wrapper puts each task's output (and in-graph pooling for embeddings) in
the graph with Optimum's I/O names."""

from __future__ import annotations

import torch

from .inputs import Source

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EncoderForExport(torch.nn.Module):
    """Wraps a transformers encoder and returns the task's outputs in the bundle's order."""

    def __init__(self, model: torch.nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
        )
        if self.task == "embed":
            hidden = out.last_hidden_state  # [B, S, C]
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            embedding = pooled / pooled.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)
            return hidden, embedding
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
            {"name": "sentence_embedding", "dtype": "float32", "shape": ["batch", config.hidden_size]},
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


def input_specs() -> list[dict]:
    return [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUTS]


def example_inputs(source: Source) -> tuple[torch.Tensor, ...]:
    """Two real sentences, one padded: tracing sees a real mask, not all-ones."""
    from .. import corpus

    texts = corpus.sample(2, split="train")
    enc = source.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    token_type_ids = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return enc["input_ids"], enc["attention_mask"], token_type_ids


def export_encoder(source: Source, path, opset: int) -> None:
    wrapper = EncoderForExport(source.model, source.task).eval()
    outputs = [spec["name"] for spec in output_specs(source)]
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    for spec in output_specs(source):
        dynamic[spec["name"]] = {i: d for i, d in enumerate(spec["shape"]) if isinstance(d, str)}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            example_inputs(source),
            str(path),
            input_names=list(INPUTS),
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
