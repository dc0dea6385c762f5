"""genai_config.json: lets onnxruntime-genai run a GPT-2 bundle's model.onnx unchanged (same I/O names)."""

from __future__ import annotations

import json
from pathlib import Path

GENAI_CONFIG = "genai_config.json"


def genai_config(manifest: dict, filename: str = "model.onnx", share_buffer: bool = False) -> dict:
    model = manifest["model"]
    tok = manifest["tokenizer"]
    eos = int(tok.get("eos_id", 0))
    return {
        "model": {
            "bos_token_id": int(tok.get("bos_id", eos)),
            "context_length": int(manifest["limits"]["max_positions"]),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": model["head_dim"],
                "hidden_size": model["hidden_size"],
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": model["num_heads"],
                "num_hidden_layers": model["num_layers"],
                "num_key_value_heads": model["num_heads"],
            },
            "eos_token_id": eos,
            "pad_token_id": int(tok.get("pad_id", eos)),
            # genai's generic decoder path; GPT-2's learned positions arrive through position_ids.
            "type": "llama",
            "vocab_size": int(manifest["limits"]["vocab_size"]),
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": int(manifest["limits"]["max_length"]),  # the writer always sets it
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": share_buffer,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai_config(bundle_dir: Path, manifest: dict) -> None:
    (Path(bundle_dir) / GENAI_CONFIG).write_text(json.dumps(genai_config(manifest), indent=2) + "\n")
