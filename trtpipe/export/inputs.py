"""Model intake: a local Hugging Face checkpoint directory or an offline preset → a torch model + tokenizer.

Weights load from safetensors, or from a `.bin` only through `torch.load(weights_only=True)`: never a full
unpickle of untrusted files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..models import MODELS, ModelSpec, family_for_model_type, supported_families
from ..presets import PRESET_LABELS, PRESETS, Preset
from ..runtime.errors import UserError
from ..runtime.paths import read_json

DEMO_DIR_ENV = "TRTPIPE_MODELS"


@dataclass
class Source:
    """A loaded model ready to export, with what `parity` needs to rebuild it later."""

    name: str
    spec: ModelSpec
    task: str
    model: object  # transformers PreTrainedModel, eval mode
    tokenizer: object  # transformers PreTrainedTokenizerFast
    info: dict = field(default_factory=dict)  # goes into manifest["source"]

    @property
    def config(self):
        return self.model.config


def models_dir() -> Path:
    return Path(os.environ.get(DEMO_DIR_ENV, "models"))


def weights_sha256(model) -> str:
    """sha256 over the model's tensors in name order: identifies weights independently of file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def library_versions() -> dict:
    import onnx
    import torch
    import transformers

    from .. import __version__

    versions = {
        "trtpipe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def _head_class(spec: ModelSpec, task: str):
    _check_task(spec, task)
    import transformers

    return getattr(transformers, spec.heads[task])


def _check_task(spec: ModelSpec, task: str) -> None:
    if task not in spec.tasks:
        raise UserError(
            f"task {task!r} is not available for {spec.family}; {spec.family} supports: {', '.join(spec.tasks)}"
        )


def load_source(model: str, task: str | None = None, seed: int = 0) -> Source:
    """Resolve MODEL (a checkpoint directory or a preset name) and load it for `task`."""
    path = Path(model)
    if path.exists():
        return _load_checkpoint(path, task, name=path.name)
    if model in PRESETS:
        return _load_preset(PRESETS[model], task, seed)
    raise UserError(
        f"{model!r} is neither a checkpoint directory nor a preset; presets: {', '.join(PRESETS)} "
        "(or pass the path of a Hugging Face checkpoint directory)"
    )


def _config_family(path: Path) -> tuple[dict, ModelSpec]:
    if not path.is_dir():
        raise UserError(f"{path} is a file; pass the checkpoint directory (with config.json and the weights)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(
            f"{path} has no config.json: pass a Hugging Face checkpoint directory (save_pretrained output)"
        )
    raw = read_json(cfg_path, f"{cfg_path} is not valid JSON ({{error}}); fix or re-save the checkpoint")
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    spec = family_for_model_type(model_type or "")
    if spec is None:
        raise UserError(
            f"unsupported architecture {model_type!r} in {cfg_path}; supported families: {supported_families()}"
        )
    return raw, spec


def _load_state_dict(path: Path):
    """Return (state_dict or None, description). None means: let transformers load safetensors itself."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return None, "safetensors"
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise UserError(
            f"{path} has no weights (model.safetensors or pytorch_model.bin); save the checkpoint with save_pretrained"
        )
    import torch

    state: dict = {}
    for file in bins:
        try:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise UserError(
                f"refused to load {file}: it is not a plain tensor file ({exc.__class__.__name__}); trtpipe never fully "
                "unpickles checkpoints — convert it to safetensors from a trusted environment"
            ) from None
    return state, "pytorch_model.bin (weights_only)"


def _load_checkpoint(path: Path, task: str | None, name: str) -> Source:
    raw, spec = _config_family(path)
    task = task or spec.tasks[0]
    _check_task(spec, task)
    cls = _head_class(spec, task)
    state, fmt = _load_state_dict(path)
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        if task == "qa" and config.num_labels != 2:
            config.num_labels = 2  # a QA head scores start and end; a classifier's labels do not carry over
        kwargs = dict(
            config=config,
            local_files_only=True,
            output_loading_info=True,
            attn_implementation=spec.attention,
        )
        if state is not None:
            model, info = cls.from_pretrained(None, state_dict=state, **kwargs)
        else:
            model, info = cls.from_pretrained(path, use_safetensors=True, **kwargs)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(
            f"could not load the checkpoint in {path}: {str(exc).splitlines()[0][:300]}"
        ) from None
    model.eval()
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if task == "embed":
        from .pooling import read_pooling

        source_pooling = read_pooling(path)
    tokenizer = _load_tokenizer(path)
    source_info = {
        "kind": "checkpoint",
        "name": name,
        "path": str(path.resolve()),
        "weights_format": fmt,
        "random_weights": False,
        "random_head": bool(missing),
        "missing_keys": missing[:20],
    }
    if task == "embed":
        source_info["pooling"] = source_pooling
    return Source(name, spec, task, model, tokenizer, source_info)


def _load_tokenizer(path: Path):
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=True)
    except Exception as exc:
        raise UserError(
            f"could not load a tokenizer from {path} ({str(exc).splitlines()[0][:200]}); the checkpoint needs "
            "tokenizer.json, vocab.txt (BERT) or spiece.model (ALBERT, XLM-R, DeBERTa)"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"the tokenizer in {path} has no fast (Rust) version; save it with tokenizer.json")
    return tok


def _load_preset(preset: Preset, task: str | None, seed: int) -> Source:
    spec = MODELS[preset.family]
    task = task or preset.default_task
    _check_task(spec, task)
    if preset.source == "minilm":
        from .vocab import minilm_dir

        source = _load_checkpoint(minilm_dir(), task, name=preset.name)
        source.info.update(kind="preset", preset=preset.name, path=None, description=preset.description)
        return source
    if preset.source == "demo":
        path = models_dir() / preset.name
        if not (path / "config.json").is_file():
            raise UserError(
                f"demo model {preset.name} is not trained yet ({path.resolve()} missing); run `make demo-models`, "
                f"or point ${DEMO_DIR_ENV} at the folder that holds it"
            )
        source = _load_checkpoint(path, task, name=preset.name)
        source.info.update(kind="preset", preset=preset.name, description=preset.description)
        return source
    return _random_preset(preset, spec, task, seed)


def _random_preset(preset: Preset, spec: ModelSpec, task: str, seed: int) -> Source:
    import torch
    import transformers

    from .family_vocabs import family_tokenizer_dir, is_family_tokenizer
    from .vocab import gpt2_tokenizer_dir, minilm_dir

    transformers.logging.set_verbosity_error()
    if preset.tokenizer == "minilm":
        tok_dir = minilm_dir()
    elif is_family_tokenizer(preset.tokenizer):
        tok_dir = family_tokenizer_dir(preset.tokenizer)
    else:
        tok_dir = gpt2_tokenizer_dir(int(preset.tokenizer.rsplit("-", 1)[1]))
    tokenizer = _load_tokenizer(tok_dir)
    config = getattr(transformers, spec.config_class)(**preset.config)
    if spec.kind == "encoder":
        # the model's embedding table covers every id its tokenizer makes, and padding is the tokenizer's
        # (RoBERTa / MPNet count position ids from padding_idx + 1)
        config.vocab_size = max(int(config.vocab_size), len(tokenizer))
        for key in ("pad", "bos", "eos", "cls", "sep"):
            token_id = getattr(tokenizer, f"{key}_token_id", None)
            if token_id is not None and hasattr(config, f"{key}_token_id"):
                setattr(config, f"{key}_token_id", int(token_id))
    if task in PRESET_LABELS:
        names = PRESET_LABELS[task]
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
    config._attn_implementation = spec.attention
    torch.manual_seed(seed)
    model = _head_class(spec, task)(config).eval()
    info = {
        "kind": "preset",
        "name": preset.name,
        "preset": preset.name,
        "path": None,
        "seed": seed,
        "random_weights": True,
        "random_head": True,
        "description": preset.description,
    }
    if task == "embed":
        from .pooling import DEFAULT

        info["pooling"] = dict(DEFAULT)
    return Source(preset.name, spec, task, model, tokenizer, info)
