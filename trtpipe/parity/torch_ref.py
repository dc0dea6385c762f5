"""`TorchSession`: the PyTorch reference behind the Session contract (export extra only; never imported by the
runtime). For GPT-2 it runs transformers' own GPT2LMHeadModel with a DynamicCache — not our export module — so the
exported graph is checked against the upstream implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError


class TorchSession:
    """The PyTorch reference behind the Session contract (export extra only; never imported by the runtime)."""

    backend = "torch"

    def __init__(self, source, all_logits: bool = False):
        import torch

        from ..export.decoder import input_specs, output_specs
        from ..export.encoder import input_names, wrapper_for
        from ..export.encoder import output_specs as encoder_outputs

        self.torch = torch
        self.source = source
        self.decoder = source.spec.kind == "decoder"
        self.all_logits = all_logits
        if self.decoder:
            self.input_names = tuple(s["name"] for s in input_specs(source.config))
            self.output_names = tuple(s["name"] for s in output_specs(source.config, all_logits))
        else:
            self.wrapper = wrapper_for(source)
            self.input_names = input_names(source)
            self.output_names = tuple(s["name"] for s in encoder_outputs(source))

    @classmethod
    def from_bundle(cls, bundle: Bundle, all_logits: bool = False) -> TorchSession:
        from ..export.inputs import load_source, weights_sha256

        src = bundle.manifest["source"]
        if src.get("kind") == "checkpoint":
            target = src.get("path")
            if not target or not Path(target).exists():
                raise UserError(
                    f"cannot rebuild the PyTorch reference: the checkpoint {target} is gone; "
                    "parity needs the source checkpoint (or re-export from where it lives)"
                )
        elif src.get("path") and (Path(src["path"]) / "config.json").is_file():
            target = src["path"]  # a demo preset: the checkpoint it was exported from, wherever parity runs
        else:
            target = src.get("preset") or src.get("name")
        source = load_source(str(target), bundle.task, seed=int(src.get("seed", 0) or 0))
        if weights_sha256(source.model) != src.get("weights_sha256"):
            raise UserError(
                f"the source weights of {bundle.path} changed since export (sha256 differs); "
                f"re-export with `trtpipe export {target} --task {bundle.task} --out {bundle.path} --overwrite`"
            )
        return cls(source, all_logits=all_logits)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch.no_grad():
            if not self.decoder:
                outputs = self.wrapper(*(tensors[name] for name in self.input_names))
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                return {n: o.float().numpy() for n, o in zip(self.output_names, outputs)}
            return self._run_decoder(tensors)

    def _run_decoder(self, t: dict) -> dict[str, np.ndarray]:
        from transformers.cache_utils import DynamicCache

        layers = self.source.config.n_layer
        cache = DynamicCache()
        if t["past_key_values.0.key"].shape[2] > 0:
            for i in range(layers):
                cache.update(t[f"past_key_values.{i}.key"], t[f"past_key_values.{i}.value"], i)
        out = self.source.model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            position_ids=t["position_ids"],
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits if self.all_logits else out.logits[:, -1:, :]
        result = {"logits": logits.float().numpy()}
        for i, layer in enumerate(out.past_key_values.layers):
            result[f"present.{i}.key"] = layer.keys.float().numpy()
            result[f"present.{i}.value"] = layer.values.float().numpy()
        return result

    def close(self) -> None:
        pass
