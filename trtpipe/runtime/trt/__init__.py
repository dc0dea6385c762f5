"""TensorRT at run time: `TrtSession` (encoders, any one-shot graph) and `TrtDecoder` (GPT-2, KV on the device),
for TensorRT 10 (`trt10`) and TensorRT-RTX (`rtx`) plans.

Nothing heavy is imported here: tensorrt / tensorrt_rtx and cuda-python are imported inside functions, and the
pure parts (profile checks, buffer sizing, the manifest guard) run and are tested without a GPU.
"""

from .compat import Environment, check_engine, choose_engine, rebuild_command
from .cudart import CudaRuntime
from .decoder import TrtDecoder
from .platform import FLAVOURS, Gpu, nvidia_gpus
from .profiles import DECODE, PREFILL, io_capacities, select_profile, shape_problem
from .session import DeviceTensor, TrtSession

__all__ = [
    "DECODE",
    "FLAVOURS",
    "PREFILL",
    "CudaRuntime",
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
