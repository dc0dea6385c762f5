"""TensorRT engines behind the Session contract: `TrtSession` (encoders, any one-shot graph) and `TrtDecoder`
(GPT-2 with device-resident KV ping-pong buffers and two optimization profiles: 0 = prefill, 1 = decode).

Plans come in two flavours (DESIGN §9): `trt10` (module `tensorrt`) and `rtx` (module `tensorrt_rtx`, JIT-compiled
at first load, runtime cache kept under ~/.cache/trtpipe). Both use the named-tensor API: set_input_shape,
set_tensor_address, execute_async_v3. Device buffers are allocated once, sized from the profiles' maxima; a shape
outside the engine's profile is refused before anything runs, with the profile's bounds in the message.

Nothing heavy is imported at module import: tensorrt / tensorrt_rtx and cuda-python are imported inside functions,
and the pure parts (profile checks, buffer sizing, the manifest guard) run and are tested without a GPU.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .errors import UserError
from .session import check_feeds

FLAVOURS = {"trt10": "tensorrt", "rtx": "tensorrt_rtx"}
FLAVOUR_NAMES = {"trt10": "TensorRT 10", "rtx": "TensorRT-RTX"}
FLAVOUR_INSTALL = {"trt10": "pip install trtpipe[gpu]", "rtx": "pip install trtpipe[rtx]"}
# TensorRT-RTX targets RTX-class GPUs: Turing (7.5, opt-in), Ampere (8.0/8.6), Ada (8.9), Blackwell RTX (12.x).
# A default (portable) RTX build runs on 8.0, 8.6, 8.9, 12.0 and later; Hopper (9.0) and B200 (10.0) are not RTX.
RTX_DEFAULT_CCS = ("8.0", "8.6", "8.9", "12.0")
RTX_KNOWN_CCS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
PREFILL, DECODE = 0, 1


# ------------------------------------------------------------------------------------------------ the machine


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str  # "8.9"
    memory_bytes: int
    driver: str

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


def _run_nvidia_smi(args: list[str]) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[Gpu, ...]:
    """The NVIDIA GPUs nvidia-smi sees (empty without a GPU or a driver). Cached for the process."""
    text = _run_nvidia_smi(
        [
            "--query-gpu=index,name,compute_cap,memory.total,driver_version",
            "--format=csv,noheader,nounits",
        ]
    )
    if text is None:  # old drivers lack compute_cap
        text = _run_nvidia_smi(
            ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits"]
        )
        if text is None:
            return ()
        rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]
        rows = [[r[0], r[1], "", r[2], r[3]] for r in rows if len(r) >= 4]
    else:
        rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    gpus = []
    for row in rows:
        if len(row) < 5:
            continue
        try:
            memory = int(float(row[3])) << 20  # MiB
        except ValueError:
            memory = 0
        gpus.append(Gpu(int(row[0]) if row[0].isdigit() else 0, row[1], row[2], memory, row[4]))
    return tuple(gpus)


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def import_flavour(flavour: str):
    """The TensorRT module of a flavour, or a UserError naming the package and `trtpipe doctor`."""
    module = FLAVOURS.get(flavour)
    if module is None:
        raise UserError(f"unknown TensorRT flavour {flavour!r}; choose trt10 or rtx")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{FLAVOUR_NAMES[flavour]} (python module {module}) is not installed: `{FLAVOUR_INSTALL[flavour]}`; "
            "see `trtpipe doctor`"
        ) from None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


# Options that only one flavour takes, with how many values follow each.
_FLAVOUR_ONLY = {
    "rtx": {"--compute-capabilities": 1},
    "trt10": {"--version-compatible": 0, "--hardware-compatible": 0, "--timing-cache": 1},
}


def rebuild_command(bundle_path: Path | str, entry: dict, flavour: str | None = None) -> str:
    """The exact command that rebuilds an engine entry (optionally for another flavour)."""
    args = list(entry.get("build_args") or ["--variant", entry.get("variant", "fp32")])
    built = entry.get("flavour", "rtx")
    flavour = flavour or built
    if flavour != built:
        args = _drop_options(args, _FLAVOUR_ONLY.get(built, {}))
    if "--flavour" in args:
        args[args.index("--flavour") + 1] = flavour
    else:
        args += ["--flavour", flavour]
    return shlex.join(["trtpipe", "build", str(bundle_path), *args, "--overwrite"])


def _drop_options(args: list[str], options: dict[str, int]) -> list[str]:
    out, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in options:
            skip = options[arg]
        else:
            out.append(arg)
    return out


# --------------------------------------------------------------------------------------------- manifest guard


@dataclass(frozen=True)
class Environment:
    """What an engine must match: the flavour's library version and the GPU."""

    flavour: str
    version: str | None
    gpu: Gpu | None


def rtx_supports(entry: dict, cc: str) -> bool:
    ccs = entry.get("compute_capabilities") or []
    if cc in ccs:
        return True
    try:
        major = int(cc.split(".")[0])
    except ValueError:
        return False
    return bool(entry.get("portable")) and major >= 12  # "8.0, 8.6, 8.9, 12.0 and later"


def check_engine(bundle: Bundle, file: str, entry: dict, env: Environment) -> None:
    """Refuse an engine that does not match this machine or the bundle's ONNX, with the command that rebuilds it."""
    flavour = entry.get("flavour")
    variant = entry.get("variant", "fp32")
    if flavour not in FLAVOURS:
        raise UserError(
            f"{bundle.path}/{file}: unknown flavour {flavour!r} in manifest.json; rebuild it: `{rebuild_command(bundle.path, entry, 'rtx')}`"
        )
    source = bundle.variants.get(variant)
    if source is None:
        raise UserError(
            f"{bundle.path}/{file} was built from variant {variant}, which the bundle no longer has; "
            f"recreate it with `trtpipe optimize {bundle.path} --precision {variant}` and rebuild: "
            f"`{rebuild_command(bundle.path, entry)}`"
        )
    current = (source.get("sha256") or {}).get(source.get("file"))
    if entry.get("onnx_sha256") != current:
        raise UserError(
            f"{bundle.path}/{file} was built from a different {source.get('file')} (sha256 {str(entry.get('onnx_sha256'))[:12]}…, "
            f"now {str(current)[:12]}…); rebuild it: `{rebuild_command(bundle.path, entry)}`"
        )
    if env.gpu is None:
        raise UserError(
            "backend trt needs an NVIDIA GPU, and none was found (nvidia-smi); see `trtpipe doctor`"
        )
    gpu = env.gpu
    if flavour != env.flavour:
        raise UserError(
            f"{bundle.path}/{file} is a {FLAVOUR_NAMES[flavour]} plan but this machine runs {FLAVOUR_NAMES[env.flavour]}; "
            f"rebuild it: `{rebuild_command(bundle.path, entry, env.flavour)}`"
        )
    built = str(entry.get("tensorrt_version") or "")
    if flavour == "trt10":
        cc_ok = gpu.compute_capability in (entry.get("compute_capabilities") or [])
        if entry.get("flags", {}).get("hardware_compatibility") == "ampere+":
            cc_ok = _cc_at_least(gpu.compute_capability, "8.0")
        if not cc_ok:
            raise UserError(
                f"{bundle.path}/{file} was built for {entry.get('target')} (compute capability "
                f"{', '.join(entry.get('compute_capabilities') or ['?'])}) but this GPU is {gpu.name} "
                f"(compute capability {gpu.compute_capability}); rebuild it here: `{rebuild_command(bundle.path, entry)}`"
            )
        same = built == (env.version or "")
        if entry.get("flags", {}).get("version_compatible"):
            same = _version_tuple(env.version or "0")[:1] == _version_tuple(built)[:1] and _version_tuple(
                env.version or "0"
            ) >= _version_tuple(built)
        if not same:
            raise UserError(
                f"{bundle.path}/{file} was built with TensorRT {built or '?'} but this is TensorRT {env.version}; "
                f"plans are tied to the TensorRT version that built them: `{rebuild_command(bundle.path, entry)}`"
            )
        return
    # TensorRT-RTX: RTX-class GPUs only.
    if not rtx_supports(entry, gpu.compute_capability):
        if gpu.compute_capability.split(".")[0] in ("9", "10"):
            raise UserError(
                f"{bundle.path}/{file} is a TensorRT-RTX plan, which runs on RTX-class GPUs, not on {gpu.name} "
                f"(compute capability {gpu.compute_capability}); build a TensorRT 10 engine here: "
                f"`{rebuild_command(bundle.path, entry, 'trt10')}`"
            )
        raise UserError(
            f"{bundle.path}/{file} targets compute capability {', '.join(entry.get('compute_capabilities') or ['?'])} "
            f"but {gpu.name} is {gpu.compute_capability}; rebuild it: "
            f"`{rebuild_command(bundle.path, entry)} --compute-capabilities {gpu.compute_capability}`"
        )
    if _version_tuple(built)[:2] != _version_tuple(env.version or "0")[:2]:
        raise UserError(
            f"{bundle.path}/{file} was built with TensorRT-RTX {built or '?'} but this is TensorRT-RTX {env.version}; "
            f"rebuild it: `{rebuild_command(bundle.path, entry)}`"
        )


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "")[:4]) or (0,)


def _cc_at_least(cc: str, floor: str) -> bool:
    return _version_tuple(cc) >= _version_tuple(floor)


# ------------------------------------------------------------------------------------------- profile checks


def fmt_shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def shape_problem(profile: dict, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why `shapes` do not fit `profile` (None if they do). Profiles: {"name", "shapes": {input: {min,opt,max}}}."""
    for name, shape in shapes.items():
        bounds = profile["shapes"].get(name)
        if bounds is None:
            return f"the engine has no input {name!r}"
        low, high = bounds["min"], bounds["max"]
        if len(shape) != len(low):
            return f"input {name!r} has rank {len(shape)}, the engine expects {len(low)}"
        for axis, (size, lo, hi) in enumerate(zip(shape, low, high)):
            if not lo <= size <= hi:
                return (
                    f"input {name!r} has shape {fmt_shape(shape)}, outside the engine's {profile.get('name', 'profile')} "
                    f"profile (min {fmt_shape(low)}, max {fmt_shape(high)}; axis {axis} is {size})"
                )
    return None


def select_profile(
    profiles: list[dict], shapes: dict[str, tuple[int, ...]], bundle_path: Path | str | None = None
) -> int:
    """Index of the profile that holds `shapes`. Decoders pick by phase: empty past → prefill (0), else decode (1)."""
    if not profiles:
        raise UserError(
            "the engine's manifest entry lists no optimization profiles; rebuild it with `trtpipe build`"
        )
    past = next((s for n, s in shapes.items() if n.startswith("past_key_values.")), None)
    if len(profiles) == 2 and past is not None:
        candidates = [PREFILL] if past[2] == 0 else [DECODE]
    else:
        candidates = list(range(len(profiles)))
    problems = []
    for index in candidates:
        problem = shape_problem(profiles[index], shapes)
        if problem is None:
            return index
        problems.append(problem)
    hint = (
        f"`trtpipe build {bundle_path} --max-shapes …`" if bundle_path else "`trtpipe build … --max-shapes …`"
    )
    raise UserError(f"{problems[0]}; send smaller inputs or rebuild the engine with larger shapes: {hint}")


def io_capacities(
    profiles: list[dict],
    input_itemsize: dict[str, int],
    output_itemsize: dict[str, int],
    output_shapes: Callable[[int, dict[str, tuple]], dict[str, tuple]],
) -> dict[str, int]:
    """Bytes each I/O tensor needs: the largest over profiles of its max shape. `output_shapes(profile, input max
    shapes)` reports the engine's output shapes for those inputs. Every buffer gets at least one element so that
    zero-size tensors (an empty past) still have a valid address."""
    sizes: dict[str, int] = {}
    for index, profile in enumerate(profiles):
        maxima = {name: tuple(b["max"]) for name, b in profile["shapes"].items()}
        for name, shape in maxima.items():
            sizes[name] = max(sizes.get(name, 0), int(np.prod(shape, dtype=np.int64)) * input_itemsize[name])
        for name, shape in output_shapes(index, maxima).items():
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name} has an unresolved shape {shape} at the profile maximum")
            volume = int(np.prod(shape, dtype=np.int64))
            sizes[name] = max(sizes.get(name, 0), volume * output_itemsize[name])
    for name, itemsize in {**input_itemsize, **output_itemsize}.items():
        sizes[name] = max(sizes.get(name, 0), itemsize)
    return sizes


# ------------------------------------------------------------------------------------------------ CUDA calls


class CudaRuntime:
    """The few CUDA runtime calls the engines need, through cuda-python (`cuda.bindings.runtime`, ≥ 12.6, or the
    older `cuda.cudart`). Tests substitute an object with the same methods that works on host memory."""

    def __init__(self, cudart):
        self.cudart = cudart

    @classmethod
    def load(cls) -> CudaRuntime:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart  # cuda-python < 12.6
            except ImportError:
                raise UserError(
                    "backend trt needs cuda-python: `pip install 'cuda-python>=12.6'` (part of trtpipe[gpu]); "
                    "see `trtpipe doctor`"
                ) from None
        return cls(cudart)

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = getattr(err, "name", str(err))
            raise RuntimeError(f"CUDA error {name}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        self._check(self.cudart.cudaFree(ptr))

    def stream(self):
        return self._check(self.cudart.cudaStreamCreate())

    def stream_handle(self, stream) -> int:
        return int(stream)

    def destroy_stream(self, stream) -> None:
        self._check(self.cudart.cudaStreamDestroy(stream))

    def sync(self, stream) -> None:
        self._check(self.cudart.cudaStreamSynchronize(stream))

    def htod(self, ptr: int, array: np.ndarray, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, stream))

    def dtoh(self, array: np.ndarray, ptr: int, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, stream))

    def memset(self, ptr: int, nbytes: int, stream) -> None:
        self._check(self.cudart.cudaMemsetAsync(ptr, 0, nbytes, stream))

    def begin_capture(self, stream) -> None:
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.cudart.cudaStreamBeginCapture(stream, mode))

    def end_capture(self, stream):
        graph = self._check(self.cudart.cudaStreamEndCapture(stream))
        executable = self._check(self.cudart.cudaGraphInstantiate(graph, 0))
        self._check(self.cudart.cudaGraphDestroy(graph))
        return executable

    def launch(self, executable, stream) -> None:
        self._check(self.cudart.cudaGraphLaunch(executable, stream))

    def destroy_graph(self, executable) -> None:
        self._check(self.cudart.cudaGraphExecDestroy(executable))


# -------------------------------------------------------------------------------------------------- logging


class _Messages:
    def __init__(self):
        self.lines: collections.deque = collections.deque(maxlen=200)
        self.errors: collections.deque = collections.deque(maxlen=50)


_LOGGERS: dict[str, object] = {}
_NOISE = ("has Int64 binding", "Thread context has not been set")


def trt_logger(trt):
    """One logger per TensorRT module for the whole process (TensorRT keeps the first one it is given).
    Messages are kept for error reports; warnings are printed only with TRTPIPE_TRT_VERBOSE=1."""
    key = getattr(trt, "__name__", "trt")
    if key in _LOGGERS:
        return _LOGGERS[key]
    messages = _Messages()

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = messages

        def log(self, severity, msg):
            text = str(msg)
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 1:
                messages.errors.append(text)
            if level <= 2:
                messages.lines.append(text)
            if os.environ.get("TRTPIPE_TRT_VERBOSE") and level <= 2 and not any(n in text for n in _NOISE):
                print(f"[{key}] {text}", file=sys.stderr)

    _LOGGERS[key] = Logger()
    return _LOGGERS[key]


def last_error(logger) -> str:
    errors = getattr(logger, "messages", None)
    if errors is None or not errors.errors:
        return "no details from TensorRT"
    return errors.errors[-1].splitlines()[0][:400]


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """TensorRT's ONNX parser prints to the process's stdout; keep it off stdout (which carries --json)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# ------------------------------------------------------------------------------------------- engine choice


def current_environment(flavour: str, trt=None) -> Environment:
    gpus = nvidia_gpus()
    version = getattr(trt, "__version__", None) if trt is not None else _installed_version(flavour)
    return Environment(flavour, version, gpus[0] if gpus else None)


def _installed_version(flavour: str) -> str | None:
    from importlib import metadata

    for dist in {"trt10": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "rtx": ("tensorrt-rtx",)}[flavour]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def engine_entries(bundle: Bundle, variant: str) -> list[tuple[str, dict]]:
    return [(f, e) for f, e in bundle.engines.items() if isinstance(e, dict) and e.get("variant") == variant]


def choose_engine(bundle: Bundle, variant: str) -> tuple[str, dict]:
    """The engine entry for `variant` that this machine can run, or a one-line UserError naming what is missing."""
    entries = engine_entries(bundle, variant)
    if not nvidia_gpus():
        raise UserError(
            "backend trt needs an NVIDIA GPU, and none was found (nvidia-smi); see `trtpipe doctor`"
        )
    installed = [f for f in ("trt10", "rtx") if module_available(FLAVOURS[f])]
    if not installed:
        raise UserError(
            "backend trt needs TensorRT: `pip install trtpipe[gpu]` (TensorRT 10) or `pip install trtpipe[rtx]` "
            "(TensorRT-RTX, RTX GPUs); see `trtpipe doctor`"
        )
    if not entries:
        raise UserError(
            f"{bundle.path} has no TensorRT engine for variant {variant}; build one with "
            f"`trtpipe build {bundle.path} --variant {variant}`"
        )
    first_error: UserError | None = None
    for flavour in installed:
        env = current_environment(flavour)
        for file, entry in sorted(entries, key=lambda fe: fe[1].get("flavour") != flavour):
            try:
                check_engine(bundle, file, entry, env)
            except UserError as exc:
                first_error = first_error or exc
                continue
            return file, entry
    assert first_error is not None
    raise first_error


def rtx_cache_path(plan_sha256: str) -> Path:
    root = os.environ.get("TRTPIPE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "trtpipe"
    )
    return Path(root) / "rtx" / f"{plan_sha256[:32]}.runtime-cache"


# -------------------------------------------------------------------------------------------------- session


@dataclass
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype
    capacity: int  # bytes
    ptr: int = 0


@dataclass
class DeviceTensor:
    """A caller-owned device buffer bound to an engine tensor for one execution."""

    ptr: int
    shape: tuple[int, ...]


class TrtSession:
    """A TensorRT plan behind the Session contract. `run` is thread-safe (one context, one stream, one lock)."""

    backend = "trt"

    def __init__(
        self,
        bundle: Bundle,
        file: str,
        entry: dict,
        trt=None,
        cuda=None,
        cuda_graph: bool = False,
        verify: bool = True,
    ):
        self.bundle = bundle
        self.file = file
        self.entry = entry
        self.flavour = entry["flavour"]
        self.variant = entry.get("variant", "fp32")
        self.profiles: list[dict] = entry.get("profiles") or []
        self.trt = trt if trt is not None else import_flavour(self.flavour)
        self.cuda = cuda if cuda is not None else CudaRuntime.load()
        self.lock = threading.Lock()
        self.closed = False
        source = bundle.variants.get(self.variant, {})
        self.specs = source.get("inputs") or bundle.manifest["inputs"]
        self.limits = bundle.limits
        path = bundle.file(file)
        if verify:
            bundle.verify_files(
                {file: entry["sha256"]},
                f"engine {file}",
                f"rebuild it: `{rebuild_command(bundle.path, entry)}`",
            )
        self.logger = trt_logger(self.trt)
        self.runtime = self.trt.Runtime(self.logger)
        if entry.get("flags", {}).get("version_compatible") and hasattr(
            self.runtime, "engine_host_code_allowed"
        ):
            self.runtime.engine_host_code_allowed = True  # version-compatible plans carry their lean runtime
        plan = path.read_bytes()
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise UserError(
                f"{FLAVOUR_NAMES[self.flavour]} could not load {bundle.path}/{file} ({last_error(self.logger)}); "
                f"rebuild it: `{rebuild_command(bundle.path, entry)}`"
            )
        self.runtime_cache = None
        self.context = self._create_context(cuda_graph)
        if self.context is None:
            raise RuntimeError(f"could not create an execution context for {file}: {last_error(self.logger)}")
        self.stream = self.cuda.stream()
        self.tensors = self._tensors()
        names = {t.name for t in self.tensors.values() if t.is_input}
        for profile in self.profiles:
            if set(profile["shapes"]) != names:
                raise UserError(
                    f"{bundle.path}/{file}: the manifest's profiles name {sorted(profile['shapes'])} but the engine "
                    f"takes {sorted(names)}; rebuild it: `{rebuild_command(bundle.path, entry)}`"
                )
        count = getattr(self.engine, "num_optimization_profiles", len(self.profiles))
        if count != len(self.profiles):
            raise UserError(
                f"{bundle.path}/{file} has {count} optimization profiles but its manifest entry lists "
                f"{len(self.profiles)}; rebuild it: `{rebuild_command(bundle.path, entry)}`"
            )
        manifest_outputs = [o["name"] for o in bundle.manifest["outputs"]]
        engine_outputs = [t.name for t in self.tensors.values() if not t.is_input]
        self.input_names = tuple(spec["name"] for spec in self.specs)
        self.output_names = tuple(
            [n for n in manifest_outputs if n in engine_outputs]
            + [n for n in engine_outputs if n not in manifest_outputs]
        )
        self.active_profile = -1
        self._allocate()

    # -- construction
    @classmethod
    def from_bundle(
        cls, bundle: Bundle, variant: str | None = None, verify: bool = True, cuda_graph: bool = False
    ) -> TrtSession:
        variant = variant or "fp32"
        bundle.variant(variant)  # a missing variant → the optimize hint
        file, entry = choose_engine(bundle, variant)
        return cls(bundle, file, entry, cuda_graph=cuda_graph, verify=verify)

    def _create_context(self, cuda_graph: bool):
        trt = self.trt
        if self.flavour != "rtx" or not hasattr(self.engine, "create_runtime_config"):
            return self.engine.create_execution_context()
        config = self.engine.create_runtime_config()
        self.runtime_cache_path = rtx_cache_path(self.entry.get("sha256", "plan"))
        cache = config.create_runtime_cache()
        if cache is not None:
            if self.runtime_cache_path.is_file():
                with contextlib.suppress(Exception):
                    cache.deserialize(self.runtime_cache_path.read_bytes())
            config.set_runtime_cache(cache)
            self.runtime_cache = cache
        if cuda_graph and hasattr(trt, "CudaGraphStrategy"):
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        return self.engine.create_execution_context(config)

    def _tensors(self) -> dict[str, _Tensor]:
        trt, engine = self.trt, self.engine
        tensors = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            tensors[name] = _Tensor(name, is_input, dtype, 0)
        return tensors

    def _output_shapes_at(self, profile: int, maxima: dict[str, tuple]) -> dict[str, tuple]:
        self._set_profile(profile)
        for name, shape in maxima.items():
            if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
                raise RuntimeError(f"set_input_shape({name}, {shape}) failed: {last_error(self.logger)}")
        return {
            t.name: tuple(self.context.get_tensor_shape(t.name))
            for t in self.tensors.values()
            if not t.is_input
        }

    def _allocate(self) -> None:
        inputs = {t.name: t.dtype.itemsize for t in self.tensors.values() if t.is_input}
        outputs = {t.name: t.dtype.itemsize for t in self.tensors.values() if not t.is_input}
        sizes = io_capacities(self.profiles, inputs, outputs, self._output_shapes_at)
        for name, tensor in self.tensors.items():
            tensor.capacity = sizes[name]
            tensor.ptr = self.cuda.malloc(tensor.capacity)

    def _set_profile(self, index: int) -> None:
        if index == self.active_profile:
            return
        ok = self.context.set_optimization_profile_async(index, self.cuda.stream_handle(self.stream))
        if not ok:
            raise RuntimeError(f"set_optimization_profile_async({index}) failed: {last_error(self.logger)}")
        self.active_profile = index

    # -- running
    def _check(self, feeds: dict) -> dict[str, np.ndarray]:
        return check_feeds(feeds, self.specs, self.limits)

    def execute(
        self,
        host_inputs: dict[str, np.ndarray],
        device: dict[str, DeviceTensor] | None = None,
        fetch: tuple[str, ...] | None = None,
        into: dict[str, np.ndarray] | None = None,
        profile: int | None = None,
        launch: Callable[[], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """One execution. host_inputs are copied into the preallocated input buffers; `device` binds caller-owned
        device buffers (KV past inputs, present outputs) by name; `fetch` names outputs copied back to host
        (into the arrays of `into` where given). The caller holds self.lock."""
        if self.closed:
            raise UserError("this TensorRT session is closed")
        device = device or {}
        shapes = {name: tuple(a.shape) for name, a in host_inputs.items()}
        shapes.update({n: t.shape for n, t in device.items() if self.tensors[n].is_input})
        index = profile if profile is not None else select_profile(self.profiles, shapes, self.bundle.path)
        if profile is not None:
            problem = shape_problem(self.profiles[index], shapes)
            if problem:
                raise UserError(
                    f"{problem}; rebuild the engine with larger shapes: `trtpipe build {self.bundle.path} --max-shapes …`"
                )
        self._set_profile(index)
        stream = self.stream
        for name, array in host_inputs.items():
            tensor = self.tensors[name]
            if array.dtype != tensor.dtype:
                array = array.astype(tensor.dtype)
            array = np.ascontiguousarray(array)
            if array.nbytes > tensor.capacity:
                raise UserError(
                    f"input {name} of {array.nbytes} bytes exceeds its {tensor.capacity}-byte buffer"
                )
            if not self.context.set_input_shape(name, tuple(int(d) for d in array.shape)):
                raise UserError(
                    f"TensorRT refused shape {fmt_shape(array.shape)} for {name}: {last_error(self.logger)}"
                )
            if array.nbytes:
                self.cuda.htod(tensor.ptr, array, stream)
            self.context.set_tensor_address(name, tensor.ptr)
        for name, bound in device.items():
            if self.tensors[name].is_input and not self.context.set_input_shape(name, tuple(bound.shape)):
                raise UserError(
                    f"TensorRT refused shape {fmt_shape(bound.shape)} for {name}: {last_error(self.logger)}"
                )
            self.context.set_tensor_address(name, bound.ptr)
        for tensor in self.tensors.values():
            if not tensor.is_input and tensor.name not in device:
                self.context.set_tensor_address(tensor.name, tensor.ptr)
        ok = (
            launch() if launch is not None else self.context.execute_async_v3(self.cuda.stream_handle(stream))
        )
        if not ok:
            raise RuntimeError(f"execute_async_v3 failed on {self.file}: {last_error(self.logger)}")
        results: dict[str, np.ndarray] = {}
        for name in fetch if fetch is not None else self.output_names:
            tensor = self.tensors[name]
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            target = (into or {}).get(name)
            if target is None:
                target = np.empty(shape, dtype=tensor.dtype)
            elif (
                tuple(target.shape) != shape or target.dtype != tensor.dtype or not target.flags.c_contiguous
            ):
                raise UserError(
                    f"output buffer {name} is {target.dtype}{list(target.shape)}; this run produces "
                    f"{tensor.dtype}{list(shape)} (contiguous)"
                )
            if target.nbytes:
                self.cuda.dtoh(target, tensor.ptr, stream)
            results[name] = target
        self.cuda.sync(stream)
        return results

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self._check(feeds)
        with self.lock:
            return self.execute(feeds)

    def run_into(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Run with caller-owned host output buffers (copied straight into them); outputs not given are dropped."""
        feeds = self._check(feeds)
        unknown = sorted(set(outputs) - set(self.output_names))
        if unknown:
            raise UserError(
                f"unknown output(s) {', '.join(unknown)}; this engine has: {', '.join(self.output_names)}"
            )
        with self.lock:
            self.execute(feeds, fetch=tuple(outputs), into=outputs)

    def close(self) -> None:
        if self.closed:
            return
        with self.lock:
            self.closed = True
            if self.runtime_cache is not None:
                self._save_runtime_cache()
            for tensor in self.tensors.values():
                if tensor.ptr:
                    with contextlib.suppress(Exception):
                        self.cuda.free(tensor.ptr)
                    tensor.ptr = 0
            with contextlib.suppress(Exception):
                self.cuda.destroy_stream(self.stream)
            self.context = None
            self.engine = None

    def _save_runtime_cache(self) -> None:
        """Keep TensorRT-RTX's JIT-compiled kernels for the next start (best effort; never fails a run)."""
        with contextlib.suppress(Exception):
            blob = self.runtime_cache.serialize()
            path = self.runtime_cache_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(memoryview(blob))
            os.replace(tmp, path)

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"TrtSession({self.bundle.path}/{self.file}, flavour={self.flavour}, variant={self.variant})"


# -------------------------------------------------------------------------------------------------- decoder


class DeviceKVCache:
    """Ping-pong K/V buffers on the device for one request: past is read from one copy at the current length,
    present (past + new rows) is written by the engine into the other, then they swap. [B, H, T, D] layout."""

    inplace = False

    def __init__(
        self, pointers: list[list[int]], batch: int, heads: int, head_dim: int, capacity: int, itemsize: int
    ):
        self.pointers = pointers  # [copy][2 * layer + kind]
        self.batch, self.heads, self.head_dim, self.capacity = batch, heads, head_dim, capacity
        self.itemsize = itemsize
        self.current = 0
        self.length = 0

    @property
    def nbytes(self) -> int:
        per = self.batch * self.heads * self.capacity * self.head_dim * self.itemsize
        return per * sum(len(copy) for copy in self.pointers)

    def shape(self, length: int) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, length, self.head_dim)

    def swap(self) -> None:
        self.current = 1 - self.current


def kv_buffer_bytes(batch: int, heads: int, length: int, head_dim: int, itemsize: int) -> int:
    """Bytes of one K or V buffer [B, H, T, D]; the pool holds 2 copies × 2 kinds × layers of these."""
    return batch * heads * length * head_dim * itemsize


class TrtDecoder:
    """The decoder-runner interface of `Generator` on a two-profile GPT-2 engine, with the KV cache on the device.

    prefill: left-padded prompts through profile 0 (empty past); decode: one token per row through profile 1, past
    bound from one device copy and present written into the other. With cuda_graph (TensorRT 10 plans), each decode
    shape (batch, past length, ping-pong side) is captured once into a CUDA graph and replayed afterwards; TensorRT-RTX
    plans capture whole graphs themselves (IRuntimeConfig.cuda_graph_strategy)."""

    inplace = False

    def __init__(self, session: TrtSession, cuda_graph: bool = False):
        self.session = session
        bundle = session.bundle
        self.bundle = bundle
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.vocab = bundle.limits["vocab_size"]
        if len(session.profiles) != 2:
            raise UserError(
                f"{bundle.path}/{session.file} has {len(session.profiles)} profile(s); a GPT-2 engine needs two "
                f"(prefill, decode): `{rebuild_command(bundle.path, session.entry)}`"
            )
        self.kv_names = [
            (f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}")
            for layer in range(self.layers)
            for kind in ("key", "value")
        ]
        present = session.tensors[self.kv_names[0][1]]
        self.kv_dtype = present.dtype
        decode = session.profiles[DECODE]["shapes"]
        prefill = session.profiles[PREFILL]["shapes"]
        self.max_batch = min(prefill["input_ids"]["max"][0], decode["input_ids"]["max"][0])
        self.max_prompt = prefill["input_ids"]["max"][1]
        self.max_total = decode["attention_mask"]["max"][1]
        self.cuda_graph = cuda_graph and session.flavour == "trt10"
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.pool: list[list[int]] = []
        self.pool_batch = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str | None = None, cuda_graph: bool = False) -> TrtDecoder:
        cuda_graph = cuda_graph or bool(os.environ.get("TRTPIPE_CUDA_GRAPH"))
        return cls(
            TrtSession.from_bundle(bundle, variant=variant, cuda_graph=cuda_graph), cuda_graph=cuda_graph
        )

    # -- cache
    def new_cache(self, batch: int, capacity: int) -> DeviceKVCache:
        if batch > self.max_batch:
            raise UserError(
                f"a batch of {batch} prompts exceeds the engine's maximum batch {self.max_batch}; send fewer prompts "
                f"or rebuild: `trtpipe build {self.bundle.path} --max-shapes input_ids:{batch}x{self.max_prompt},"
                f"attention_mask:{batch}x{self.max_total}`"
            )
        if capacity > self.max_total:
            raise UserError(
                f"prompt + new tokens = {capacity} exceeds the engine's {self.max_total} positions; "
                "lower --max-new-tokens or rebuild the engine with a larger attention_mask maximum"
            )
        if batch > self.pool_batch:
            self._free_pool()
            size = kv_buffer_bytes(batch, self.heads, self.max_total, self.head_dim, self.kv_dtype.itemsize)
            self.pool = [[self.session.cuda.malloc(size) for _ in self.kv_names] for _ in range(2)]
            self.pool_batch = batch
        return DeviceKVCache(self.pool, batch, self.heads, self.head_dim, capacity, self.kv_dtype.itemsize)

    def _free_pool(self) -> None:
        for executable in self.graphs.values():
            with contextlib.suppress(Exception):
                self.session.cuda.destroy_graph(executable)
        self.graphs.clear()
        for copy in self.pool:
            for ptr in copy:
                with contextlib.suppress(Exception):
                    self.session.cuda.free(ptr)
        self.pool, self.pool_batch = [], 0

    def _bind(self, cache: DeviceKVCache, past_len: int, new_len: int) -> dict[str, DeviceTensor]:
        bound = {}
        src, dst = cache.pointers[cache.current], cache.pointers[1 - cache.current]
        for index, (past, present) in enumerate(self.kv_names):
            bound[past] = DeviceTensor(src[index], cache.shape(past_len))
            bound[present] = DeviceTensor(dst[index], cache.shape(past_len + new_len))
        return bound

    # -- steps
    def prefill(
        self, prompts: list[list[int]], cache: DeviceKVCache, pad_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompts → (logits [B, V] float32, attention mask [B, P])."""
        batch = len(prompts)
        width = max(len(ids) for ids in prompts)
        if width > self.max_prompt:
            raise UserError(
                f"a prompt of {width} tokens exceeds the engine's prefill maximum {self.max_prompt}; shorten it or "
                f"rebuild: `trtpipe build {self.bundle.path} --max-shapes input_ids:{self.max_batch}x{width},"
                f"attention_mask:{self.max_batch}x{self.max_total}`"
            )
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = ids
            mask[row, width - len(ids) :] = 1
        positions = np.clip(mask.cumsum(-1) - 1, 0, None).astype(np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        with self.session.lock:
            out = self.session.execute(feeds, self._bind(cache, 0, width), fetch=("logits",), profile=PREFILL)
        cache.swap()
        cache.length = width
        return out["logits"].reshape(batch, self.vocab).astype(np.float32, copy=False), mask

    def decode(
        self, tokens: np.ndarray, lengths: np.ndarray, cache: DeviceKVCache, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One token per row (profile 1). `lengths` (valid tokens per row) is implied by the mask here."""
        del lengths
        batch = len(tokens)
        past_len = cache.length
        if past_len + 1 > cache.capacity:
            raise UserError(f"the KV cache holds {cache.capacity} positions; this step needs {past_len + 1}")
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        feeds = {
            "input_ids": np.asarray(tokens, dtype=np.int64).reshape(batch, 1),
            "attention_mask": mask,
            "position_ids": (mask.sum(-1, keepdims=True) - 1).astype(np.int64),
        }
        bound = self._bind(cache, past_len, 1)
        with self.session.lock:
            launch = self._graph_launch((batch, past_len, cache.current)) if self.cuda_graph else None
            out = self.session.execute(feeds, bound, fetch=("logits",), profile=DECODE, launch=launch)
        cache.swap()
        cache.length = past_len + 1
        return out["logits"].reshape(batch, self.vocab).astype(np.float32, copy=False), mask

    def _graph_launch(self, key: tuple) -> Callable[[], bool]:
        """Replay the captured decode step for `key`, or run it plainly once and capture it for next time."""
        session, cuda = self.session, self.session.cuda

        def launch() -> bool:
            executable = self.graphs.get(key)
            if executable is not None:
                self.graphs.move_to_end(key)
                cuda.launch(executable, session.stream)
                return True
            handle = cuda.stream_handle(session.stream)
            if not session.context.execute_async_v3(
                handle
            ):  # a plain run first flushes deferred shape updates
                return False
            cuda.sync(session.stream)
            cuda.begin_capture(session.stream)
            captured = session.context.execute_async_v3(handle)
            executable = cuda.end_capture(session.stream)
            if captured:
                self.graphs[key] = executable
                while len(self.graphs) > 4096:
                    _, old = self.graphs.popitem(last=False)
                    cuda.destroy_graph(old)
            return True

        return launch

    def close(self) -> None:
        self._free_pool()
        self.session.close()


__all__ = [
    "DECODE",
    "FLAVOURS",
    "PREFILL",
    "CudaRuntime",
    "DeviceKVCache",
    "DeviceTensor",
    "Environment",
    "Gpu",
    "TrtDecoder",
    "TrtSession",
    "check_engine",
    "choose_engine",
    "io_capacities",
    "nvidia_gpus",
    "rebuild_command",
    "select_profile",
    "shape_problem",
]
