"""Stage 1: a Hugging Face checkpoint (or an offline preset) → a bundle with model.onnx (needs the export extra)."""

from .writer import export_bundle

__all__ = ["export_bundle"]
