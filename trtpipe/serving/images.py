"""Which Triton container runs a repository: the nvcr.io/nvidia/tritonserver:<YY.MM>-py3 release whose TensorRT
matches the engines' (a plan loads only in the TensorRT that built it), from a small table with its sources."""

from __future__ import annotations

from ..runtime.errors import UserError

REGISTRY = "nvcr.io/nvidia/tritonserver"

# Triton release -> (TensorRT in its -py3 container, ONNX Runtime in its onnxruntime backend).
# TensorRT: NVIDIA's Triton release notes, "NVIDIA Triton Inference Server Container Versions"
#   (https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-YY-MM.html), cross-checked
#   against the CUDA each release note names and the TensorRT NVIDIA's containers of that CUDA carry
#   (triton-inference-server/server docs/introduction/compatibility.md). None: not recorded here (releases after
#   25.10), so an engine is never matched to it; such a container is still usable with --image.
# ONNX Runtime: triton-inference-server/server docs/introduction/compatibility.md, "ONNX Runtime Versions".
RELEASES: dict[str, tuple[str | None, str]] = {
    "24.05": ("10.0.1.6", "1.18.0"),
    "24.06": ("10.1.0.27", "1.18.0"),
    "24.07": ("10.2.0.19", "1.18.1"),
    "24.08": ("10.3.0.26", "1.18.1"),
    "24.09": ("10.4.0.26", "1.19.2"),
    "24.10": ("10.5.0.18", "1.19.2"),
    "24.11": ("10.6.0.26", "1.19.2"),
    "24.12": ("10.7.0.23", "1.20.1"),
    "25.01": ("10.8.0.43", "1.20.1"),
    "25.02": ("10.8.0.43", "1.20.1"),
    "25.03": ("10.9.0.34", "1.21.0"),
    "25.04": ("10.9.0.34", "1.21.0"),
    "25.05": ("10.10.0.31", "1.22.0"),
    "25.06": ("10.11.0.33", "1.22.0"),
    "25.07": ("10.11.0.33", "1.22.0"),
    "25.08": ("10.13.2.6", "1.23.0"),
    "25.09": ("10.13.3.9", "1.23.0"),
    "25.10": ("10.13.3.9", "1.23.1"),
    "25.11": (None, "1.23.2"),
    "25.12": (None, "1.23.2"),
    "26.01": (None, "1.23.2"),
    "26.02": (None, "1.24.1"),
    "26.03": (None, "1.24.2"),
    "26.04": (None, "1.24.4"),
    "26.05": (None, "1.24.4"),
    "26.06": (None, "1.24.4"),
    "26.07": (None, "1.27.0"),
    "26.08": (None, "1.28.0"),
}


def triton_image(release: str) -> str:
    return f"{REGISTRY}:{release}-py3"


def default_release() -> str:
    """The newest release in the table: what runs ONNX models and what the Python-backend image is built FROM."""
    return max(RELEASES)


def _release_key(version: str) -> tuple[int, ...] | None:
    """TensorRT's major.minor.patch: the part a plan has to match (the container and the wheel of one release
    ship the same build)."""
    parts = version.strip().split(".")
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        return None
    return tuple(int(p) for p in parts[:3])


def release_for_tensorrt(version: str | None, what: str) -> str:
    """The newest release whose container has the TensorRT `version` (major.minor.patch); `what` names the
    engine in the message. An unknown version is one line naming --image."""
    key = _release_key(version or "")
    matches = [r for r, (trt, _) in RELEASES.items() if trt and key and _release_key(trt) == key]
    if matches:
        return max(matches)
    known = sorted({trt for trt, _ in RELEASES.values() if trt}, key=_release_key)
    if not version:
        raise UserError(
            f"{what} does not record the TensorRT version that built it, so the Triton container cannot be "
            "matched to it; pass --image nvcr.io/nvidia/tritonserver:<YY.MM>-py3 with that TensorRT, or "
            "rebuild the engine with `trtpipe build` and rewrite the repository"
        )
    raise UserError(
        f"{what} was built with TensorRT {version}, which no Triton release in trtpipe's table ships "
        f"(known: {known[0]} … {known[-1]}); pass --image with a tritonserver container that has TensorRT "
        f"{'.'.join(version.split('.')[:3])}, or rebuild the engine with one of those"
    )


def onnxruntime_of(release: str) -> str | None:
    entry = RELEASES.get(release)
    return entry[1] if entry else None


__all__ = ["RELEASES", "default_release", "onnxruntime_of", "release_for_tensorrt", "triton_image"]
