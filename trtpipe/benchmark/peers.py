"""Peer baselines measured in the same run: PyTorch eager (transformers), Optimum's ORTModel classes on Optimum's own
export, and onnxruntime-genai on our model.onnx. Everything is rebuilt offline from the bundle's source."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError


def cache_root() -> Path:
    from ..export.vocab import cache_dir

    root = cache_dir() / "peers"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(bundle: Bundle, what: str) -> str:
    src = bundle.manifest["source"]
    digest = hashlib.sha256(f"{what}:{src.get('weights_sha256')}:{bundle.task}".encode()).hexdigest()[:12]
    return f"{what}-{bundle.family}-{bundle.task}-{digest}"


def source_model(bundle: Bundle):
    """The bundle's PyTorch model (rebuilt from preset + seed or loaded from the checkpoint), eval mode."""
    from ..parity import TorchSession

    return TorchSession.from_bundle(bundle).source


def _cached(bundle: Bundle, what: str, marker: str, make: Callable[[Path], None]) -> Path:
    """A directory of the peer cache, made once by `make(tmp)` and renamed into place when `marker` is in it (a
    killed run leaves only a temp dir behind)."""
    target = cache_root() / _key(bundle, what)
    if (target / marker).is_file():
        return target
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    make(tmp)
    os.replace(tmp, target)
    return target


def hf_checkpoint(bundle: Bundle) -> Path:
    """A save_pretrained directory of the bundle's source model (+ tokenizer), for peers that load checkpoints."""

    def make(tmp: Path) -> None:
        source = source_model(bundle)
        source.model.save_pretrained(tmp)
        source.tokenizer.save_pretrained(tmp)

    return _cached(bundle, "hf", "config.json", make)


# --------------------------------------------------------------------------------------------- optimum


OPTIMUM_CLASSES = {
    "embed": "ORTModelForFeatureExtraction",
    "classify": "ORTModelForSequenceClassification",
    "ner": "ORTModelForTokenClassification",
    "qa": "ORTModelForQuestionAnswering",
    "fill-mask": "ORTModelForMaskedLM",
    "generate": "ORTModelForCausalLM",
}


def optimum_export(bundle: Bundle) -> Path:
    """Optimum's own ONNX export of the same weights (what its users run), cached."""

    def make(tmp: Path) -> None:
        try:
            import optimum.onnxruntime as ortm
        except ImportError:
            raise UserError("the Optimum baseline needs optimum-onnx: pip install trtpipe[export]") from None
        cls = getattr(ortm, OPTIMUM_CLASSES[bundle.task])
        kwargs = {"use_cache": True} if bundle.is_decoder else {}
        model = cls.from_pretrained(str(hf_checkpoint(bundle)), export=True, **kwargs)
        model.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            src = hf_checkpoint(bundle) / name
            if src.exists():
                shutil.copy(src, tmp / name)

    return _cached(bundle, "optimum", "config.json", make)


def optimum_int8(bundle: Bundle) -> Path:
    """Optimum's own dynamic int8 recipe (AutoQuantizationConfig.avx512_vnni, per-tensor) on its own export, cached."""

    def make(tmp: Path) -> None:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        source = optimum_export(bundle)
        quantizer = ORTQuantizer.from_pretrained(str(source), file_name="model.onnx")
        quantizer.quantize(
            save_dir=str(tmp),
            quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False),
        )
        for file in source.iterdir():
            if file.suffix != ".onnx" and file.is_file() and not (tmp / file.name).exists():
                shutil.copy(file, tmp / file.name)

    return _cached(bundle, "optimum-int8-vnni", "model_quantized.onnx", make)


def optimum_model(bundle: Bundle, threads: int | None, quantized: bool = False):
    import onnxruntime as ort
    import optimum.onnxruntime as ortm

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    cls = getattr(ortm, OPTIMUM_CLASSES[bundle.task])
    kwargs = {"use_cache": True, "use_io_binding": False} if bundle.is_decoder else {}
    if quantized:
        return cls.from_pretrained(
            str(optimum_int8(bundle)),
            file_name="model_quantized.onnx",
            session_options=options,
            provider="CPUExecutionProvider",
            **kwargs,
        )
    return cls.from_pretrained(
        str(optimum_export(bundle)), session_options=options, provider="CPUExecutionProvider", **kwargs
    )


def optimum_export_bytes(bundle: Bundle) -> int:
    path = optimum_export(bundle)
    return sum(p.stat().st_size for p in path.glob("*.onnx*"))


# ------------------------------------------------------------------------------------------- decoders


class Timed:
    def __init__(self, ttft: float, steps: list[float], ids: list[int]):
        self.ttft, self.steps, self.ids = ttft, steps, ids


class _Clock:
    """A transformers streamer that timestamps every token as generate() produces it."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True  # the first put() is the prompt
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def _hf_generate(model, prompt: list[int], new_tokens: int) -> Timed:
    import torch

    clock = _Clock()
    ids = torch.tensor([prompt])
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=0,
        )
    times = [started] + clock.times
    steps = [b - a for a, b in zip(times[1:], times[2:])]
    return Timed(times[1] - started, steps, out[0, len(prompt) :].tolist())


class TorchDecoder:
    label = "PyTorch eager (transformers generate)"

    def __init__(self, bundle: Bundle, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = source_model(bundle).model

    def run(self, prompt: list[int], new_tokens: int) -> Timed:
        return _hf_generate(self.model, prompt, new_tokens)


class OptimumDecoder:
    label = "Optimum ORTModelForCausalLM (its own export)"

    def __init__(self, bundle: Bundle, threads: int | None):
        self.model = optimum_model(bundle, threads)

    def run(self, prompt: list[int], new_tokens: int) -> Timed:
        return _hf_generate(self.model, prompt, new_tokens)


class GenaiDecoder:
    label = "onnxruntime-genai (our model.onnx)"

    def __init__(self, bundle: Bundle, threads: int | None, variant_file: str = "model.onnx"):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise UserError(
                "the onnxruntime-genai baseline needs it installed: pip install trtpipe[bench]"
            ) from None
        self.og = og
        folder = cache_root() / (_key(bundle, "genai") + "-" + variant_file.replace(".", "_"))
        folder.mkdir(parents=True, exist_ok=True)
        config = json.loads((bundle.path / "genai_config.json").read_text())
        config["model"]["decoder"]["filename"] = variant_file
        if threads:
            config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
            config["model"]["decoder"]["session_options"]["inter_op_num_threads"] = 1
        (folder / "genai_config.json").write_text(json.dumps(config, indent=2))
        link = folder / variant_file
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(bundle.file(variant_file).resolve())
        cfg = og.Config(str(folder))
        cfg.clear_providers()
        self.model = og.Model(cfg)

    def run(self, prompt: list[int], new_tokens: int) -> Timed:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=len(prompt) + new_tokens,
            min_length=len(prompt) + new_tokens,
            do_sample=False,
            batch_size=1,
        )
        generator = og.Generator(self.model, params)
        started = time.perf_counter()
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        generator.generate_next_token()
        ttft = time.perf_counter() - started
        ids = [int(generator.get_next_tokens()[0])]
        steps = []
        while not generator.is_done():
            tick = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - tick)
            ids.append(int(generator.get_next_tokens()[0]))
        return Timed(ttft, steps, ids)
