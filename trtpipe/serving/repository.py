"""Bundles → a Triton model repository: one model per bundle, on the onnxruntime, tensorrt or python backend.

```
REPO/
  trtpipe-repository.json        what was written from what (bundles, sha256, options, trtpipe version)
  <model>/config.pbtxt           checked against Triton's ModelConfig schema before it is written
  <model>/1/model.onnx (+ data)  --backend onnxruntime: the bundle's ONNX variant, unchanged
  <model>/1/model.plan           --backend tensorrt: the bundle's TensorRT 10 engine
  <model>/1/model.py + bundle/   --backend python: a shim into trtpipe.serving.python_model + the bundle
```
Every check runs before anything is written; the repository is built in a temp dir beside REPO and renamed into
place at the end (an existing one is swapped out in one step), so an error leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..runtime import cpu
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.prefill import PREFILL_BACKENDS
from ..runtime.session import BACKENDS
from ..runtime.store import staged_bundle
from .config import Scheduling, batchable, build_config, graph_io, python_io, render_config
from .engines import check_profile, pick_engine

TRITON_BACKENDS = ("python", "onnxruntime", "tensorrt")
VERSION = "1"  # Triton serves the highest numbered version directory; we write one
MANIFEST = "trtpipe-repository.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# The Python backend loads <model>/1/model.py. It only adds the configured sys.path entries and hands over to the
# installed trtpipe, so the serving code is the runtime's own and is upgraded with it.
MODEL_PY = '''"""Triton Python-backend entry point for the trtpipe bundle in ./bundle (written by `trtpipe triton`).

Serving code: trtpipe.serving.python_model from the Python environment the backend runs in (install trtpipe
there, or list directories in this model's `sys_path` parameter). Re-run `trtpipe triton` rather than editing.
"""

import json
import os
import sys


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters") or {}
        extra = json.loads((parameters.get("sys_path") or {}).get("string_value") or "[]")
        for entry in reversed(extra):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        if args.get("model_instance_kind") == "GPU":  # each instance is a process: pin it to its GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args["model_instance_device_id"])
        from trtpipe.serving.python_model import BundleModel

        self.model = BundleModel(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
'''


@dataclass(frozen=True)
class RepoOptions:
    """How `trtpipe triton` writes each model (the CLI's options)."""

    backend: str = "python"
    max_batch: int = 8
    instances: int = 1
    dynamic_batching: bool = True
    queue_delay_us: int = 100
    device: str = "auto"  # auto | cpu | gpu
    runtime: str = "ort-cpu"  # python backend: the trtpipe session backend inside Triton
    variant: str | None = None
    engine: str | None = None  # tensorrt: engine file inside the bundle, when it has several
    stream: bool = False  # python backend, generation: decoupled (streamed) responses
    python_path: tuple[str, ...] = ()
    threads: int | None = None  # python backend: intra-op threads per instance (None: auto)
    max_queue: int = 64  # generation: requests that may wait for a slot before new ones are refused
    prefill_chunk: int = 64  # generation: prompt tokens prefilled per engine step
    prefill_backend: str | None = None  # generation on ort-cpu: "ov" prefills on OpenVINO (prefill.py)
    kv_cache: str = "fp32"  # generation on ort-cpu: int8 = the bundle's kv8 twins (optimize --precision kv8)
    paged: bool = False  # generation on --runtime ov: OpenVINO's PagedAttention engine (runtime/paged.py)


@dataclass
class PlannedModel:
    """One model of the repository, fully checked, ready to write."""

    name: str
    bundle: Bundle
    backend: str
    config_text: str
    files: list[tuple[Path, str]] = field(default_factory=list)  # (source, path inside the version dir)
    bundle_copy: bool = False  # python backend: the whole bundle goes to <version>/bundle
    summary: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- planning


def parse_spec(spec: str) -> tuple[str | None, Path]:
    """`BUNDLE` or `NAME=BUNDLE` (an existing path containing '=' is taken as a path)."""
    if "=" in spec and not Path(spec).exists():
        name, _, path = spec.partition("=")
        if not _NAME.fullmatch(name):
            raise UserError(
                f"model name {name!r} (in {spec!r}) must be 1-128 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        return name, Path(path)
    return None, Path(spec)


def _default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name).lstrip("_.-")
    return name[:128] or "model"


def _check_options(options: RepoOptions) -> None:
    if options.backend not in TRITON_BACKENDS:
        raise UserError(f"unknown --backend {options.backend!r}; choose one of: {', '.join(TRITON_BACKENDS)}")
    if not 1 <= options.max_batch <= 4096:
        raise UserError(f"--max-batch must be between 1 and 4096 (got {options.max_batch})")
    if not 1 <= options.instances <= 64:
        raise UserError(f"--instances must be between 1 and 64 (got {options.instances})")
    if not 0 <= options.queue_delay_us <= 10_000_000:
        raise UserError(f"--max-queue-delay-us must be between 0 and 10000000 (got {options.queue_delay_us})")
    if options.threads is not None and not 1 <= options.threads <= 1024:
        raise UserError(f"--threads must be between 1 and 1024 (got {options.threads})")
    if not 0 <= options.max_queue <= 100_000:
        raise UserError(f"--max-queue must be between 0 and 100000 (got {options.max_queue})")
    if not 2 <= options.prefill_chunk <= 65_536:  # a piece of one token rounds otherwise (runtime/chunks.py)
        raise UserError(f"--prefill-chunk must be between 2 and 65536 (got {options.prefill_chunk})")
    if options.prefill_backend is not None:
        if options.prefill_backend not in PREFILL_BACKENDS:
            raise UserError(
                f"unknown --prefill-backend {options.prefill_backend!r}; choose {' or '.join(PREFILL_BACKENDS)}"
            )
        if options.backend != "python" or options.runtime != "ort-cpu":
            raise UserError("--prefill-backend applies to --backend python --runtime ort-cpu only")
    if options.paged and (options.backend, options.runtime) != ("python", "ov"):
        raise UserError("--paged applies to --backend python --runtime ov only")
    if (options.threads is not None or options.kv_cache != "fp32") and options.backend != "python":
        raise UserError("--threads and --kv-cache apply to --backend python only")
    if options.kv_cache not in ("fp32", "int8"):
        raise UserError(f"--kv-cache must be fp32 or int8 (got {options.kv_cache!r})")
    if options.device not in ("auto", "cpu", "gpu"):
        raise UserError(f"--device must be auto, cpu or gpu (got {options.device!r})")
    if options.runtime not in BACKENDS:
        raise UserError(f"unknown --runtime {options.runtime!r}; choose one of: {', '.join(BACKENDS)}")
    if options.backend != "python" and options.runtime != "ort-cpu":
        raise UserError(
            f"--runtime applies to --backend python only (Triton's {options.backend} backend runs the graph)"
        )
    relative = [p for p in options.python_path if not os.path.isabs(p)]
    if relative:
        raise UserError(
            f"--python-path entries must be absolute paths as seen by the server (got {relative[0]!r})"
        )
    if options.engine and options.backend != "tensorrt":
        raise UserError("--engine applies to --backend tensorrt only")
    if options.backend == "tensorrt" and options.device == "cpu":
        raise UserError(
            "Triton's tensorrt backend runs on GPUs only; use --device gpu (or auto), or --backend onnxruntime"
        )


def _kind(options: RepoOptions) -> str:
    if options.device != "auto":
        return options.device
    if options.backend == "tensorrt" or (
        options.backend == "python" and options.runtime not in ("ort-cpu", "ov")
    ):
        return "gpu"
    return "cpu"


def plan_models(specs: list[str], options: RepoOptions) -> list[PlannedModel]:
    """Load and check every bundle against the options; raises UserError before anything is written."""
    _check_options(options)
    if not specs:
        raise UserError("give at least one bundle: `trtpipe triton BUNDLE... --out REPO`")
    planned: list[PlannedModel] = []
    seen: dict[str, Path] = {}
    for spec in specs:
        name, path = parse_spec(spec)
        bundle = Bundle.load(path)
        name = name or _default_name(path)
        if name in seen:
            raise UserError(
                f"bundles {seen[name]} and {path} would both be served as model {name!r}; "
                f"name one of them with NAME=BUNDLE, e.g. `{name}-2={path}`"
            )
        seen[name] = path
        planned.append(_plan(name, bundle, options))
    if options.stream and not any(p.bundle.is_decoder for p in planned):
        raise UserError("--stream applies to GPT-2 generation bundles (task generate); none was given")
    return planned


def _plan(name: str, bundle: Bundle, options: RepoOptions) -> PlannedModel:
    if options.backend == "python":
        return _plan_python(name, bundle, options)
    if bundle.is_decoder:
        raise UserError(
            f"{bundle.path} is a GPT-2 generation bundle: Triton's {options.backend} backend runs one graph call, "
            "but generation needs the decoding loop (KV cache, sampling) around it; use --backend python"
        )
    batched = batchable(bundle)
    scheduling = Scheduling(
        max_batch=options.max_batch if batched else 0,
        instances=options.instances,
        kind=_kind(options),
        dynamic_batching=options.dynamic_batching and batched,
        queue_delay_us=options.queue_delay_us,
    )
    inputs, outputs = graph_io(bundle, batched)
    if options.backend == "onnxruntime":
        variant = options.variant or "fp32"
        bundle.model_path(variant)  # checks every file of the variant against its sha256
        entry = bundle.variant(variant)
        cpu.require(
            bundle.path, variant, entry
        )  # s8 int8 weights: Triton's onnxruntime on this CPU saturates them
        only = bundle.only_on(variant)  # bf16: OpenVINO's compute of model.onnx, not Triton's onnxruntime's
        if only:
            raise UserError(
                f"variant {variant} runs on {' / '.join(only)} only; serve it with --backend python "
                f"--runtime {only[0]}"
            )
        files = [(bundle.file(rel), rel) for rel in entry["sha256"]]
        filename = entry["file"]
        summary = {"variant": variant, "files": sorted(entry["sha256"])}
    else:
        engine, entry = pick_engine(bundle, options.variant, options.engine)
        check_profile(bundle, engine, entry, scheduling.max_batch)
        files = [(bundle.file(engine), "model.plan")]
        filename = "model.plan"
        summary = {"engine": engine, "flavour": entry.get("flavour")}
        if entry.get("tensorrt_version"):  # `trtpipe deploy` runs the container with this TensorRT
            summary["tensorrt_version"] = entry["tensorrt_version"]
    config = build_config(name, options.backend, inputs, outputs, scheduling, default_model_filename=filename)
    return PlannedModel(name, bundle, options.backend, render_config(config), files=files, summary=summary)


def _plan_python(name: str, bundle: Bundle, options: RepoOptions) -> PlannedModel:
    variant = options.variant
    # a missing variant: runs_on raises the UserError naming `trtpipe optimize`
    if variant is not None and not bundle.runs_on(variant, options.runtime):
        only = bundle.only_on(variant)
        raise UserError(f"variant {variant} runs on {' / '.join(only)} only; use --runtime {only[0]}")
    if options.kv_cache != "fp32" and bundle.is_decoder:  # the engine's check, before anything is written
        from ..runtime.paged import int8_check

        int8_check(bundle, variant or "fp32", options.runtime, options.paged)
    decoupled = options.stream and bundle.is_decoder
    scheduling = Scheduling(
        max_batch=options.max_batch,
        instances=options.instances,
        kind=_kind(options),
        dynamic_batching=options.dynamic_batching,
        queue_delay_us=options.queue_delay_us,
    )
    inputs, outputs = python_io(bundle)
    parameters = {
        "task": bundle.task,
        "bundle": "bundle",
        "runtime": options.runtime,
        "variant": variant or "",
        "threads": str(options.threads) if options.threads else "auto",  # auto: half the CPUs, shared
        "batch_size": "32",  # encoder rows per length-grouped batch
        "trtpipe_version": __version__,
        "sys_path": json.dumps(list(options.python_path)),
    }
    if bundle.task == "fill-mask":
        parameters["top_k"] = "5"
    if bundle.is_decoder:  # one in-flight batching engine: max_batch slots, a bounded queue, chunked prefill
        parameters.update(
            max_new_tokens="64",
            slots=str(options.max_batch),
            max_queue=str(options.max_queue),
            prefill_chunk=str(options.prefill_chunk),
            **({"prefill_backend": options.prefill_backend} if options.prefill_backend else {}),
            **({"kv_cache": options.kv_cache} if options.kv_cache != "fp32" else {}),
            **({"paged": "1"} if options.paged else {}),
        )
    config = build_config(
        name, "python", inputs, outputs, scheduling, parameters=parameters, decoupled=decoupled
    )
    summary = {"task": bundle.task, "runtime": options.runtime, "variant": variant or "default"}
    if decoupled:
        summary["decoupled"] = True
    return PlannedModel(name, bundle, "python", render_config(config), bundle_copy=True, summary=summary)


# ----------------------------------------------------------------------------------------------- writing


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (bundle files are replaced by rename, never rewritten in place, so a link stays a snapshot),
    else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _copy_bundle(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts):  # locks and temp files of writers
            continue
        if path.is_symlink():
            continue  # the runtime refuses links that leave the bundle; never carry them along
        if path.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            _link_or_copy(path, target / relative)


def _check_out(out: Path, planned: list[PlannedModel]) -> bool:
    """Refuse an --out that is, contains or lies inside a bundle, or that the Python backend cannot load from;
    return whether it is an existing empty dir."""
    resolved = out.resolve()
    odd = sorted(set(re.sub(r"[A-Za-z0-9_./+@=,-]", "", str(resolved))))
    if odd and any(m.backend == "python" for m in planned):
        raise UserError(
            f"--out {out}: Triton's Python backend starts each model's stub through a shell, which breaks on "
            f"{' '.join(repr(c) for c in odd)} in the path; choose a directory without them"
        )
    for model in planned:
        source = model.bundle.path.resolve()
        if resolved == source or resolved in source.parents:
            raise UserError(f"--out {out} would replace bundle {model.bundle.path}; choose another --out")
        if source in resolved.parents:
            raise UserError(
                f"--out {out} lies inside bundle {model.bundle.path}; choose a directory outside it"
            )
    if out.is_dir() and not out.is_symlink():
        return not any(out.iterdir())
    return False


def write_repository(
    specs: list[str], out: str | os.PathLike, options: RepoOptions, overwrite: bool = False
) -> list[PlannedModel]:
    """Write a Triton model repository for the bundles; atomic, and refuses a non-empty `out` without overwrite."""
    out = Path(out)
    planned = plan_models(specs, options)
    empty = _check_out(out, planned)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    if out.exists() and not empty and not overwrite:
        raise UserError(
            f"{out} already exists and is not empty; pass --overwrite to replace it, or choose another --out"
        )
    with staged_bundle(out, overwrite=overwrite or empty) as staging:
        for model in planned:
            model_dir = staging / model.name
            version_dir = model_dir / VERSION
            version_dir.mkdir(parents=True)
            for source, relative in model.files:
                _link_or_copy(source, version_dir / relative)
            if model.bundle_copy:
                _copy_bundle(model.bundle.path, version_dir / "bundle")
                (version_dir / "model.py").write_text(MODEL_PY, encoding="utf-8")
            (model_dir / "config.pbtxt").write_text(model.config_text, encoding="utf-8")
        record = {
            "written_by": f"trtpipe {__version__}",
            "options": {**asdict(options), "python_path": list(options.python_path)},
            "models": {
                m.name: {
                    "bundle": str(m.bundle.path.resolve()),
                    "task": m.bundle.task,
                    "family": m.bundle.family,
                    "backend": m.backend,
                    "weights_sha256": m.bundle.manifest.get("source", {}).get("weights_sha256"),
                    **m.summary,
                }
                for m in planned
            },
        }
        (staging / MANIFEST).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return planned


__all__ = ["RepoOptions", "PlannedModel", "plan_models", "write_repository", "parse_spec", "MODEL_PY"]
