"""The lean runtime: bundle → answers with numpy, tokenizers and onnxruntime (TensorRT lazily). No torch.

from trtpipe.runtime import load_pipeline, open_session, Bundle
pipe = load_pipeline("bundles/minilm-embed")
vectors = pipe.embed(["a sentence", "another one"])
"""

from .batching import BatchEngine
from .bundle import Bundle
from .errors import CheckFailed, UnpairedRows, UserError
from .feeds import check_feeds
from .generate import Completion, Generator, PromptTruncated, Token
from .sampling import Sampling
from .score import perplexity
from .session import BACKENDS, Session, open_decoder, open_session
from .tasks import Pipeline, load_pipeline
from .text import TextEncoder, TextTruncated

__all__ = [
    "BACKENDS",
    "BatchEngine",
    "Bundle",
    "CheckFailed",
    "Completion",
    "Generator",
    "Sampling",
    "Token",
    "Pipeline",
    "PromptTruncated",
    "Session",
    "TextEncoder",
    "TextTruncated",
    "UnpairedRows",
    "UserError",
    "check_feeds",
    "load_pipeline",
    "open_decoder",
    "open_session",
    "perplexity",
]
