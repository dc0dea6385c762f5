"""Demo models trained in-project on the offline Python docs (needs the export extra: torch, transformers).

`train_demo_models()` is what `make demo-models` / `trtpipe demo-models` runs; see build.py for the recipes.
"""

from .build import is_current, summary_rows, train_demo_models
from .recipes import DEMO_MODELS, RECIPES

__all__ = ["DEMO_MODELS", "RECIPES", "is_current", "summary_rows", "train_demo_models"]
