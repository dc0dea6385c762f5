"""llama.cpp's convert_hf_to_gguf.py, run inside .venv-llamacpp with one patch: it names the BPE pre-tokenizer by
hashing how the checkpoint's tokenizer splits a probe text, and refuses a tokenizer it has no hash for. The
bundles' GPT-2 tokenizer is a byte-level BPE trained offline (DESIGN.md "Models offline"), not OpenAI's, so it has
no entry; it pre-tokenizes as GPT-2's does, and the benchmark feeds token ids (never text), so "gpt-2" is named.

Usage (what llamacpp_peer.gguf_files runs): python gguf_convert.py <convert_hf_to_gguf.py> <its arguments…>
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    script = Path(sys.argv[1])
    sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
