"""Scale-out on NVIDIA Triton Inference Server: bundles → a model repository, and a loopback server to run it.

    from trtpipe.serving import RepoOptions, write_repository, start_server
    write_repository(["bundles/minilm-embed"], "triton-repo", RepoOptions(backend="python"))
    with start_server("triton-repo") as server:  # HTTP and gRPC on 127.0.0.1, free ports
        print(server.http_url)

`python_model` (what the Python backend runs) is imported only inside Triton, never from here.
"""

from .config import InvalidConfig, validate_config
from .repository import PlannedModel, RepoOptions, write_repository
from .server import TritonServer, find_triton, start_server

__all__ = [
    "InvalidConfig",
    "PlannedModel",
    "RepoOptions",
    "TritonServer",
    "find_triton",
    "start_server",
    "validate_config",
    "write_repository",
]
