"""`TrtSession`: a TensorRT plan behind the Session contract (named tensors, profiles, preallocated buffers).

Plans come in two flavours (DESIGN §9): `trt10` (module `tensorrt`) and `rtx` (module `tensorrt_rtx`, JIT-compiled
at first load, runtime cache kept under ~/.cache/trtpipe). Both use the named-tensor API: set_input_shape,
set_tensor_address, execute_async_v3. Device buffers are allocated once, sized from the profiles' maxima; a shape
outside the engine's profile is refused before anything runs, with the profile's bounds in the message.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import UserError
from ..feeds import check_feeds
from .compat import choose_engine, rebuild_command
from .cudart import CudaRuntime
from .platform import FLAVOUR_NAMES, import_flavour, last_error, trt_logger
from .profiles import fmt_shape, io_capacities, select_profile, shape_problem


def rtx_cache_path(plan_sha256: str) -> Path:
    root = os.environ.get("TRTPIPE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "trtpipe"
    )
    return Path(root) / "rtx" / f"{plan_sha256[:32]}.runtime-cache"


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
