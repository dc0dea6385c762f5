"""Held-out metrics for the demo models (fp32, no autocast: what the exported model computes), with the
baselines that give them a scale: unigram perplexity, most-frequent-token accuracy, chance."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from .train import IGNORE, masked_logits, pad_batch


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, block: int, batch: int = 8) -> dict:
    """Token perplexity of a causal LM over non-overlapping windows of a held-out stream ([N] int64)."""
    blocks = stream[: len(stream) // block * block].view(-1, block)
    nll, count = 0.0, 0
    for start in range(0, len(blocks), batch):
        ids = blocks[start : start + batch]
        logits = model(input_ids=ids).logits[:, :-1].float()  # [B, S-1, V]
        nll += float(
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        )
        count += ids[:, 1:].numel()
    return {"perplexity": math.exp(nll / count), "nll": nll / count, "tokens": count}


def unigram_perplexity(train: torch.Tensor, heldout: torch.Tensor, vocab: int) -> float:
    """Perplexity of add-one unigram frequencies from the train stream: what a model without context gets."""
    counts = torch.bincount(train, minlength=vocab).double() + 1
    logp = torch.log(counts / counts.sum())
    return math.exp(-float(logp[heldout].mean()))


def fixed_masks(
    stream: torch.Tensor, block: int, special: int, mask_id: int, cls_id: int, sep_id: int, seed: int
):
    """Held-out MLM examples: non-overlapping windows as [CLS] … [SEP], 15 % of the tokens replaced by [MASK]
    (always [MASK] here: the test asks for the hidden token, not for a detector of random swaps)."""
    width = block - 2
    body = stream[: len(stream) // width * width].view(-1, width)
    ids = torch.cat([torch.full((len(body), 1), cls_id), body, torch.full((len(body), 1), sep_id)], dim=1)
    generator = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(ids.shape, generator=generator) < 0.15) & (ids >= special)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    inputs = torch.where(chosen, torch.full_like(ids, mask_id), ids)
    return inputs, labels


@torch.no_grad()
def mlm_accuracy(model, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 32) -> dict:
    """Top-1 (and top-5) accuracy of the masked-token predictions on held-out text."""
    top1 = top5 = total = 0
    for start in range(0, len(inputs), batch):
        ids, target = inputs[start : start + batch], labels[start : start + batch]
        logits = masked_logits(model, ids, target).float()  # [M, V]
        gold = target[target != IGNORE]
        best = logits.topk(5, dim=-1).indices
        top1 += int((best[:, 0] == gold).sum())
        top5 += int((best == gold[:, None]).any(-1).sum())
        total += len(gold)
    return {"top1": top1 / total, "top5": top5 / total, "masked_tokens": total}


def frequent_token_accuracy(train: torch.Tensor, labels: torch.Tensor, special: int) -> float:
    """Accuracy of always answering the train split's most frequent token (the MLM floor)."""
    counts = Counter(int(t) for t in train.tolist() if t >= special)
    best = counts.most_common(1)[0][0]
    gold = labels[labels != IGNORE]
    return float((gold == best).double().mean())


@torch.no_grad()
def classify_accuracy(
    model, encoded: list[list[int]], labels: list[int], pad_id: int, batch: int = 32
) -> dict:
    """Held-out accuracy, per class and overall, and the chance rate of the balanced label set."""
    predictions = []
    for start in range(0, len(encoded), batch):
        feeds = pad_batch(encoded[start : start + batch], pad_id)
        predictions += model(**feeds).logits.argmax(-1).tolist()
    names = model.config.id2label
    per_class = {}
    for index in sorted(names):
        rows = [p == g for p, g in zip(predictions, labels) if g == index]
        per_class[names[index]] = sum(rows) / max(1, len(rows))
    correct = sum(p == g for p, g in zip(predictions, labels))
    return {
        "accuracy": correct / len(labels),
        "chance": 1 / len(names),
        "examples": len(labels),
        "per_class": per_class,
    }
