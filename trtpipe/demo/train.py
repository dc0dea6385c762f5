"""Training loops for the demo models: one plain AdamW loop (bf16 autocast where the CPU computes bf16 natively,
fp32 elsewhere; warmup + cosine decay,
gradient clipping) and the three objectives that feed it — next-token, masked-token and sequence labels.

Batches are drawn from seeded generators, so a run is reproducible: same seed, same data order, same masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

IGNORE = -100
MLM_HEAD = {
    "bert": "cls",
    "albert": "predictions",
}  # the MLM head module of BertForMaskedLM / AlbertForMaskedLM


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak`, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def autocast_dtype() -> torch.dtype | None:
    """bfloat16 where oneDNN runs bf16 in hardware (AVX512_BF16 / AMX), else None (train in fp32).

    On a CPU without bf16 (AVX2-only EPYCs, older Xeons) torch emulates every bf16 GEMM: a step of the demo GPT-2
    took 12.6-14.2 s under autocast against 0.39-0.57 s in fp32 on the AVX2 EPYC it was measured on."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def precision_label() -> str:
    """What the training loop computes in, for the demo metadata."""
    return (
        "bf16 autocast (CPU), fp32 weights"
        if autocast_dtype() is not None
        else "fp32 (the CPU has no native bf16)"
    )


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)


def train_loop(
    model: torch.nn.Module,
    batches: Iterator[dict],
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    steps: int,
    lr: float,
    warmup: int,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
) -> list[float]:
    """Run `steps` optimizer steps; returns the loss of every step."""
    optimizer = make_optimizer(model, lr)
    dtype = autocast_dtype()
    losses = []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        batch = next(batches)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        on_step(step, losses[-1])
    model.eval()
    return losses


# ------------------------------------------------------------------------------------------------ next token


def lm_batches(stream: torch.Tensor, block: int, batch: int, seed: int) -> Iterator[dict]:
    """Random windows of `block` tokens from one long token stream (nanoGPT style). stream: [N] int64."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(stream) - block, (batch,), generator=generator)
        yield {"input_ids": torch.stack([stream[s : s + block] for s in starts.tolist()])}


def lm_loss(model, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


# ---------------------------------------------------------------------------------------------- masked tokens


def mask_tokens(
    ids: torch.Tensor, special: int, vocab: int, mask_id: int, generator: torch.Generator, rate: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: `rate` of the non-special tokens (ids ≥ special) become targets; of those 80 % [MASK],
    10 % a random token, 10 % unchanged. Returns (inputs, labels) with labels IGNORE elsewhere."""
    maskable = ids >= special
    chosen = (torch.rand(ids.shape, generator=generator) < rate) & maskable
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    random_ids = torch.randint(special, vocab, ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


def mlm_batches(
    stream: torch.Tensor,
    block: int,
    batch: int,
    seed: int,
    cls_id: int,
    sep_id: int,
    mask_id: int,
    special: int,
    vocab: int,
    rate: float = 0.15,
) -> Iterator[dict]:
    """Random windows of `block - 2` tokens wrapped as [CLS] … [SEP], masked for MLM."""
    generator = torch.Generator().manual_seed(seed)
    width = block - 2
    while True:
        starts = torch.randint(0, len(stream) - width, (batch,), generator=generator)
        body = torch.stack([stream[s : s + width] for s in starts.tolist()])
        ids = torch.cat([torch.full((batch, 1), cls_id), body, torch.full((batch, 1), sep_id)], dim=1)
        inputs, labels = mask_tokens(ids, special, vocab, mask_id, generator, rate)
        yield {"input_ids": inputs, "labels": labels}


def masked_logits(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits at the target positions only ([M, V]): the MLM head on all S positions would cost
    ~7× more for the same loss."""
    hidden = model.base_model(input_ids=input_ids).last_hidden_state  # [B, S, D]
    head = getattr(model, MLM_HEAD[model.config.model_type])
    return head(hidden[labels != IGNORE])


def mlm_loss(model, batch: dict) -> torch.Tensor:
    labels = batch["labels"]
    logits = masked_logits(model, batch["input_ids"], labels)
    return F.cross_entropy(logits.float(), labels[labels != IGNORE])


# --------------------------------------------------------------------------------------------- classification


def classify_batches(
    encoded: list[list[int]], labels: list[int], batch: int, seed: int, pad_id: int
) -> Iterator[dict]:
    """Epochs of mini-batches in a fresh seeded order each epoch; rows of similar length share a batch (sorted
    inside windows of 8 batches, batch order shuffled), so little compute goes to padding."""
    generator = torch.Generator().manual_seed(seed)
    window = batch * 8
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        groups = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(encoded[i]))
            groups += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
        for index in torch.randperm(len(groups), generator=generator).tolist():
            rows = groups[index]
            yield pad_batch([encoded[i] for i in rows], pad_id) | {
                "labels": torch.tensor([labels[i] for i in rows])
            }


def pad_batch(rows: list[list[int]], pad_id: int) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def classify_loss(model, batch: dict) -> torch.Tensor:
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
