"""trtpipe: a deployment pipeline for BERT, ALBERT and GPT-2 (export → optimize → build → run → check)."""

__version__ = "0.1.0"
