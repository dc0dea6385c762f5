"""Sentence-embedding pooling as sentence-transformers defines it (modules.json, 1_Pooling/config.json, Normalize),
read from a checkpoint directory and put in the graph, so `sentence_embedding` equals `SentenceTransformer.encode`."""

from __future__ import annotations

from pathlib import Path

from ..runtime.errors import UserError
from ..runtime.paths import read_json

# sentence-transformers concatenates the modes it is asked for in this order (models.Pooling.forward)
MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
_CONFIG_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
# a plain checkpoint (no modules.json): mean over the text's tokens, L2-normalised — what all-MiniLM-L6-v2,
# all-mpnet-base-v2 and most sentence-transformers models do
DEFAULT = {"modes": ["mean"], "normalize": True, "from": "default (mean, L2-normalised)"}


def read_pooling(path: Path | None) -> dict:
    """The pooling a sentence-transformers directory declares, or the default for a plain checkpoint."""
    if path is None or not (path / "modules.json").is_file():
        return dict(DEFAULT)
    modules = read_json(path / "modules.json", f"{path / 'modules.json'} is not valid JSON ({{error}})")
    if not isinstance(modules, list):
        raise UserError(f"{path / 'modules.json'} must be a list of modules (sentence-transformers format)")
    found = {"modes": None, "normalize": False, "from": "modules.json"}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            if module.get("path", "") not in ("", "0_Transformer"):
                raise UserError(
                    f"{path}: the transformer module lives in {module.get('path')!r}; export that folder instead"
                )
        elif kind == "Pooling":
            config_path = path / module.get("path", "1_Pooling") / "config.json"
            config = read_json(config_path, f"{config_path} is not valid JSON ({{error}})")
            found["modes"] = _modes(config, config_path)
            if not found["modes"]:
                raise UserError(f"{config_path} enables no pooling mode; set pooling_mode_mean_tokens")
        elif kind == "Normalize":
            found["normalize"] = True
        else:
            raise UserError(
                f"{path / 'modules.json'} has the module {kind or '?'}, which trtpipe cannot put in the graph "
                "(it handles Transformer, Pooling and Normalize); export with --task embed from a directory "
                "without it, or pool the last_hidden_state yourself"
            )
    if found["modes"] is None:
        found["modes"] = list(DEFAULT["modes"])  # no Pooling module: pool as a plain checkpoint would
    return found


def _modes(config: dict, where: Path) -> list[str]:
    """sentence-transformers ≥ 5 writes `pooling_mode` (a name or a list, concatenated in that order); earlier
    versions one boolean per mode (concatenated in MODES order)."""
    named = config.get("pooling_mode")
    if named is None:
        return [mode for mode in MODES if config.get(_CONFIG_KEYS[mode])]
    names = [named] if isinstance(named, str) else list(named)
    modes = [{"mean_sqrt_len_tokens": "mean_sqrt_len"}.get(str(n), str(n)) for n in names]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UserError(
            f"{where}: unknown pooling mode(s) {', '.join(unknown)}; trtpipe knows {', '.join(MODES)}"
        )
    return modes


def pool(hidden, attention_mask, pooling: dict):
    """[B, S, C] token states → [B, C × modes] sentence embedding, over each text's own tokens."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    counts = mask.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    parts = []
    for mode in pooling["modes"]:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(hidden.masked_fill(mask == 0, -1e9).max(dim=1).values)
        elif mode == "mean":
            parts.append((hidden * mask).sum(dim=1) / counts)
        elif mode == "mean_sqrt_len":
            parts.append((hidden * mask).sum(dim=1) / counts.sqrt())
        elif mode == "weightedmean":
            positions = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1)
            weights = mask * positions
            parts.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9))
        elif mode == "lasttoken":
            last = attention_mask.sum(dim=1).long().clamp(min=1) - 1  # right padding: the last real token
            parts.append(hidden[torch.arange(hidden.shape[0]), last])
    pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    if pooling["normalize"]:
        pooled = pooled / pooled.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)
    return pooled
