"""What a Python-backend model written by `trtpipe triton` runs inside Triton: trtpipe.runtime, text in → answers out.

Imported only inside Triton's Python backend stub (it needs `triton_python_backend_utils`). The generated
`model.py` is a shim that imports this module, so the serving code is the runtime's own: Triton answers exactly
what `trtpipe run` / `trtpipe generate` would.

Dynamic batching hands `execute` several requests at once; encoder rows from all of them go through one pipeline
call, grouped by length before padding (`length_batches`), so a batch of mixed lengths costs little more than its
tokens. Generation goes to one in-flight batching engine (generation.py). A request with bad input gets its own
error (HTTP 400), the others in the batch still get their answers. While the server drains (drain.py), new requests
are refused (UNAVAILABLE).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import __version__
from ..runtime import UserError, load_pipeline
from ..runtime.manifest import MANIFEST
from . import triton_io as tio
from .drain import REFUSED, DrainWatch, ServerStopping
from .generation import GenerationModel


class BundleModel:
    """One Triton model instance serving one bundle."""

    def __init__(self, args: dict):
        config = json.loads(args["model_config"])
        params = tio.params(config)
        self.name = args.get("model_name", config.get("name", "?"))
        self.task = params["task"]
        decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled"))
        root = Path(args["model_repository"]) / str(args["model_version"]) / params.get("bundle", "bundle")
        runtime = params.get("runtime") or "ort-cpu"
        variant = params.get("variant") or None
        summary = (
            json.loads((root / MANIFEST).read_text()).get("model", {}) if (root / MANIFEST).exists() else {}
        )
        light = self.task != "generate" and tio.flops_per_token(summary) < tio.LIGHT_FLOPS_PER_TOKEN
        threads = tio.threads(params.get("threads", "auto"), config, light=light)
        self.batch_size = int(params.get("batch_size") or 32)
        self.top_k = int(params.get("top_k") or 5)
        self.pipeline = self.generation = None
        if self.task == "generate":
            self.generation = GenerationModel(
                self.name, root, params, runtime, variant, threads, stream=decoupled
            )
        else:
            self.pipeline = load_pipeline(root, backend=runtime, variant=variant, threads=threads)
            self.labels = self._label_names() if self.task == "classify" else []
            self.drain = DrainWatch()
        written_by = params.get("trtpipe_version", "")
        if written_by and written_by != __version__:
            pb_utils.Logger.log_warn(
                f"trtpipe: {self.name} was written by trtpipe {written_by} and runs on {__version__}; "
                "re-run `trtpipe triton` if answers look wrong"
            )
        pb_utils.Logger.log_info(
            f"trtpipe: {self.name} serves {root.name} ({self.task}) on {runtime}, {threads or 'default'} threads"
        )

    def finalize(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        if self.generation is not None:
            self.generation.finalize()

    # ------------------------------------------------------------------------------------------- dispatch

    def execute(self, requests: list) -> list | None:
        if self.generation is not None:
            return self.generation.execute(requests)
        if self.drain.draining:
            return [tio.error_response(ServerStopping(REFUSED)) for _ in requests]
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for index, request in enumerate(requests):
            try:
                inputs = self._read(request)
            except UserError as exc:
                responses[index] = tio.error_response(exc)
                continue
            groups.setdefault(tuple(sorted(k for k, v in inputs.items() if v is not None)), []).append(
                (index, inputs)
            )
        for members in groups.values():
            self._answer_group(members, responses)
        return responses

    def _answer_group(self, members: list[tuple[int, dict]], responses: list) -> None:
        """Answer requests with the same inputs in one runtime call; on a UserError, answer them one by one so
        that only the bad request fails."""
        try:
            self._answer(members, responses)
            return
        except UserError as exc:
            if len(members) == 1:
                responses[members[0][0]] = tio.error_response(exc)
                return
        except Exception as exc:  # a bug: every request of the call learns of it, the log keeps the traceback
            pb_utils.Logger.log_error(f"trtpipe: {self.name}: {traceback.format_exc()}")
            for index, _ in members:
                responses[index] = tio.error_response(exc)
            return
        for member in members:
            try:
                self._answer([member], responses)
            except Exception as exc:
                if not isinstance(exc, UserError):
                    pb_utils.Logger.log_error(f"trtpipe: {self.name}: {traceback.format_exc()}")
                responses[member[0]] = tio.error_response(exc)

    # -------------------------------------------------------------------------------------------- encoders

    def _read(self, request) -> dict:
        if self.task == "qa":
            question, context = tio.texts(request, "question"), tio.texts(request, "context")
            if len(question) != len(context):
                raise UserError(f"got {len(question)} questions but {len(context)} contexts")
            return {"question": question, "context": context}
        inputs = {"text": tio.texts(request, "text")}
        if self.task == "classify":
            inputs["text_pair"] = tio.texts(request, "text_pair", required=False)
            if inputs["text_pair"] is not None and len(inputs["text_pair"]) != len(inputs["text"]):
                raise UserError("give one text_pair per text")
        return inputs

    def _label_names(self) -> list[str]:
        labels = self.pipeline.bundle.labels
        for entry in self.pipeline.bundle.manifest["outputs"]:
            if entry["name"] == "logits" and isinstance(entry["shape"][-1], int):
                return [labels.get(i, f"LABEL_{i}") for i in range(entry["shape"][-1])]
        return [labels[i] for i in sorted(labels)]

    def _answer(self, members: list[tuple[int, dict]], responses: list) -> None:
        """Run the rows of all `members` through the pipeline at once, then split the answers per request."""
        first = members[0][1]
        columns = {
            key: [row for _, inputs in members for row in inputs[key]]
            for key in first
            if first[key] is not None
        }
        outputs = self._run_task(columns)
        start = 0
        for index, inputs in members:
            rows = len(next(iter(inputs.values())))
            tensors = [tio.tensor(name, value[start : start + rows]) for name, value in outputs.items()]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += rows

    def _run_task(self, columns: dict[str, list[str]]) -> dict[str, np.ndarray]:
        pipe, size = self.pipeline, self.batch_size
        if self.task == "embed":
            return {"embedding": pipe.embed(columns["text"], batch_size=size)}
        if self.task == "classify":
            results = pipe.classify(columns["text"], columns.get("text_pair"), top_k=None, batch_size=size)
            scores = np.array(
                [[r["scores"].get(label, 0.0) for label in self.labels] for r in results], np.float32
            )
            return {
                "label": tio.bytes_array([r["label"] for r in results]),
                "score": np.array([[r["score"]] for r in results], dtype=np.float32),
                "scores": scores.reshape(len(results), len(self.labels)),
            }
        if self.task == "ner":
            return {
                "entities": tio.bytes_array(
                    [json.dumps(e) for e in pipe.ner(columns["text"], batch_size=size)]
                )
            }
        if self.task == "fill-mask":
            fills = pipe.fill_mask(columns["text"], top_k=self.top_k, batch_size=size)
            return {"fills": tio.bytes_array([json.dumps(f) for f in fills])}
        if self.task == "qa":
            answers = pipe.qa(columns["question"], columns["context"])
            return {
                "answer": tio.bytes_array([a["answer"] for a in answers]),
                "score": np.array([[a["score"]] for a in answers], dtype=np.float32),
                "start": np.array([[a["start"]] for a in answers], dtype=np.int64),
                "end": np.array([[a["end"]] for a in answers], dtype=np.int64),
            }
        raise UserError(f"task {self.task!r} cannot be served")
