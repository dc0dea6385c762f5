"""The few CUDA runtime calls the engines need (cuda-python), behind one small object that tests replace."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


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
