"""GPT-2 → one ONNX decoder graph with a KV cache (Optimum's I/O names; an empty past means prefill).

The forward pass is written out here, nanoGPT style, over the checkpoint's own weights: the exported graph is then
exactly what we want (no If nodes, no framework cache classes, last-position logits through one Gemm on the tied
embedding matrix so it is stored once), and parity checks it against transformers' own implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .inputs import Source


class GPT2ForExport(torch.nn.Module):
    """input_ids [B,S], attention_mask [B,P+S], position_ids [B,S], past k/v [B,H,P,D] × L
    → logits [B,1,V] (or [B,S,V] with all_logits), present k/v [B,H,P+S,D] × L."""

    def __init__(self, hf_model: torch.nn.Module, all_logits: bool = False):
        super().__init__()
        self.transformer = hf_model.transformer
        config = hf_model.config
        self.n_layer = config.n_layer
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.eps = config.layer_norm_epsilon
        self.width = config.n_embd
        self.all_logits = all_logits

    def _ln(self, x, norm):
        return F.layer_norm(x, (self.width,), norm.weight, norm.bias, self.eps)

    @staticmethod
    def _linear(x, conv1d):
        # transformers' Conv1D keeps W as [in, out]: x @ W + b exports as MatMul + Add on the original matrix
        # (what ORT's fusions and MatMulNBits quantisation look for), not Reshape + Gemm.
        return torch.matmul(x, conv1d.weight) + conv1d.bias

    def _attention(self, block, x, bias, past_key, past_value):
        batch, seq, width = x.shape
        qkv = self._linear(x, block.attn.c_attn)  # [B, S, 3C]
        q, k, v = qkv.split(width, dim=2)

        def heads(t):
            return t.reshape(batch, seq, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, S, D]

        q, k, v = heads(q), heads(k), heads(v)
        k = torch.cat([past_key, k], dim=2)  # [B, H, P+S, D]
        v = torch.cat([past_value, v], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [B, H, S, P+S]
        scores = scores + bias
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, width)
        return self._linear(out, block.attn.c_proj), k, v

    def forward(self, input_ids, attention_mask, position_ids, *past):
        t = self.transformer
        seq = input_ids.shape[1]
        total = attention_mask.shape[1]
        x = t.wte(input_ids) + t.wpe(position_ids)  # [B, S, C]
        query_pos = torch.arange(seq, device=input_ids.device) + (total - seq)
        key_pos = torch.arange(total, device=input_ids.device)
        causal = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)  # [S, P+S]
        causal = causal.unsqueeze(0).unsqueeze(0)  # [1, 1, S, P+S]
        padding = (attention_mask > 0).unsqueeze(1).unsqueeze(1)  # [B, 1, 1, P+S]
        # Additive bias, as transformers builds it: future keys -inf, padding keys the lowest float (so a left-pad
        # query that sees no real key attends its causal window uniformly, and never produces NaN).
        lowest = torch.finfo(torch.float32).min
        bias = torch.where(causal, torch.where(padding, 0.0, lowest), float("-inf"))  # [B, 1, S, P+S]
        presents = []
        for i, block in enumerate(t.h):
            h = self._ln(x, block.ln_1)
            attn, k, v = self._attention(block, h, bias, past[2 * i], past[2 * i + 1])
            x = x + attn
            h = self._ln(x, block.ln_2)
            h = self._linear(h, block.mlp.c_fc)
            h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
            x = x + self._linear(h, block.mlp.c_proj)
            presents += [k, v]
        if self.all_logits:
            h = self._ln(x, t.ln_f)
            flat = h.reshape(-1, self.width)
            logits = F.linear(flat, t.wte.weight).reshape(h.shape[0], h.shape[1], -1)
        else:
            last = x[:, -1, :]  # [B, C]: only the last position is needed to generate
            h = self._ln(last, t.ln_f)
            logits = F.linear(h, t.wte.weight).unsqueeze(1)  # Gemm(transB) on wte: the matrix is stored once
        return (logits, *presents)


def kv_names(n_layer: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
    return past, present


def input_specs(config) -> list[dict]:
    heads, dim = config.n_head, config.n_embd // config.n_head
    past, _ = kv_names(config.n_layer)
    specs = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total_sequence"]},
        {"name": "position_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
    ]
    specs += [{"name": n, "dtype": "float32", "shape": ["batch", heads, "past_sequence", dim]} for n in past]
    return specs


def output_specs(config, all_logits: bool = False) -> list[dict]:
    heads, dim = config.n_head, config.n_embd // config.n_head
    _, present = kv_names(config.n_layer)
    logits_seq = "sequence" if all_logits else 1
    specs = [{"name": "logits", "dtype": "float32", "shape": ["batch", logits_seq, config.vocab_size]}]
    specs += [
        {"name": n, "dtype": "float32", "shape": ["batch", heads, "total_sequence", dim]} for n in present
    ]
    return specs


def example_inputs(config, batch: int = 2, seq: int = 5, past: int = 3):
    generator = torch.Generator().manual_seed(0)
    heads, dim = config.n_head, config.n_embd // config.n_head
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.int64)
    attention_mask[0, 0] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    kv = [torch.randn(batch, heads, past, dim, generator=generator) for _ in range(2 * config.n_layer)]
    return (input_ids, attention_mask, position_ids, *kv)


def export_decoder(source: Source, path, opset: int, all_logits: bool = False) -> None:
    config = source.config
    wrapper = GPT2ForExport(source.model, all_logits=all_logits).eval()
    inputs = [s["name"] for s in input_specs(config)]
    outputs = [s["name"] for s in output_specs(config, all_logits)]
    dynamic: dict[str, dict[int, str]] = {}
    for spec in input_specs(config) + output_specs(config, all_logits):
        dynamic[spec["name"]] = {i: d for i, d in enumerate(spec["shape"]) if isinstance(d, str)}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            example_inputs(config),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
