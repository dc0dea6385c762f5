"""What a Python-backend model written by `trtpipe triton` runs inside Triton: trtpipe.runtime, text in → answers out.

Imported only inside Triton's Python backend stub (it needs `triton_python_backend_utils`). The generated
`model.py` is a shim that imports this module, so the serving code is the runtime's own: Triton answers exactly
what `trtpipe run` / `trtpipe generate` would.

Dynamic batching hands `execute` several requests at once; encoder rows from all of them go through one pipeline
call (length-bucketed batches). Generation batches greedy rows that share max_new_tokens and stop strings; each
call owns its own KV cache; a sampled row runs alone, so a seeded request gives the runtime's exact sample.
A request with bad input gets its own error (HTTP 400), the others in the batch still get their answers.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import __version__
from ..runtime import Generator, Sampling, UserError, load_pipeline


def _params(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


def _threads(setting: str, config: dict) -> int | None:
    """Intra-op threads per instance. "auto": half the CPUs, shared among the model's instances (at least 1).
    The other half is for Triton's HTTP/gRPC threads, the batcher and the stubs' IPC, which ONNX Runtime's
    (spin-waiting) workers on every core compete with: on 2 cores, 1 thread per instance served 2.2x the
    requests/s of 2 (docs/serving.md)."""
    if setting in ("", "default"):
        return None
    if setting != "auto":
        return max(1, int(setting))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group") or [{}]) or 1
    return max(1, cpus // (2 * instances))


def _error(exc: BaseException):
    """An error response: UserError → invalid argument (HTTP 400), anything else → internal (500)."""
    kind = pb_utils.TritonError
    if isinstance(exc, UserError):
        code = getattr(kind, "INVALID_ARG", None)
        message = str(exc)
    else:
        code = getattr(kind, "INTERNAL", None)
        message = f"internal error: {exc.__class__.__name__}: {exc}"
    try:
        error = kind(message, code) if code is not None else kind(message)
    except TypeError:  # older Python backends take the message only
        error = kind(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _texts(request, name: str, required: bool = True) -> list[str] | None:
    """A BYTES input as one str per row (rows = the request's batch)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise UserError(f"input {name!r} is missing")
        return None
    values = tensor.as_numpy().reshape(-1)
    texts = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"input {name!r} row {index + 1} is not UTF-8 text") from None
    return texts


def _rows(request, name: str, rows: int) -> np.ndarray | None:
    """An optional numeric per-row input, one value per row."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if len(values) != rows:
        raise UserError(f"input {name!r} has {len(values)} values for {rows} rows; give one per row")
    return values


def _bytes(strings: list[str]) -> np.ndarray:
    return np.array([s.encode("utf-8") for s in strings], dtype=np.object_).reshape(-1, 1)


def _tensor(name: str, value: np.ndarray):
    return pb_utils.Tensor(name, value)


class BundleModel:
    """One Triton model instance serving one bundle."""

    def __init__(self, args: dict):
        config = json.loads(args["model_config"])
        params = _params(config)
        self.name = args.get("model_name", config.get("name", "?"))
        self.task = params["task"]
        self.decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled"))
        root = Path(args["model_repository"]) / str(args["model_version"]) / params.get("bundle", "bundle")
        runtime = params.get("runtime") or "ort-cpu"
        variant = params.get("variant") or None
        threads = _threads(params.get("threads", "auto"), config)
        self.batch_size = int(params.get("batch_size") or 32)
        self.top_k = int(params.get("top_k") or 5)
        self.max_new_tokens = int(params.get("max_new_tokens") or 64)
        if self.task == "generate":
            self.generator = Generator(root, backend=runtime, variant=variant, threads=threads)
            self.pipeline = None
        else:
            self.pipeline = load_pipeline(root, backend=runtime, variant=variant, threads=threads)
            self.generator = None
            self.labels = self._label_names() if self.task == "classify" else []
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

    # ------------------------------------------------------------------------------------------- dispatch

    def execute(self, requests: list) -> list | None:
        if self.task == "generate":
            return self._generate(requests)
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for index, request in enumerate(requests):
            try:
                inputs = self._read(request)
            except UserError as exc:
                responses[index] = _error(exc)
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
                responses[members[0][0]] = _error(exc)
                return
        except Exception as exc:  # a bug: every request of the call learns of it, the log keeps the traceback
            pb_utils.Logger.log_error(f"trtpipe: {self.name}: {traceback.format_exc()}")
            for index, _ in members:
                responses[index] = _error(exc)
            return
        for member in members:
            try:
                self._answer([member], responses)
            except Exception as exc:
                if not isinstance(exc, UserError):
                    pb_utils.Logger.log_error(f"trtpipe: {self.name}: {traceback.format_exc()}")
                responses[member[0]] = _error(exc)

    # -------------------------------------------------------------------------------------------- encoders

    def _read(self, request) -> dict:
        if self.task == "qa":
            question, context = _texts(request, "question"), _texts(request, "context")
            if len(question) != len(context):
                raise UserError(f"got {len(question)} questions but {len(context)} contexts")
            return {"question": question, "context": context}
        inputs = {"text": _texts(request, "text")}
        if self.task == "classify":
            inputs["text_pair"] = _texts(request, "text_pair", required=False)
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
            tensors = [_tensor(name, value[start : start + rows]) for name, value in outputs.items()]
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
                "label": _bytes([r["label"] for r in results]),
                "score": np.array([[r["score"]] for r in results], dtype=np.float32),
                "scores": scores.reshape(len(results), len(self.labels)),
            }
        if self.task == "ner":
            return {"entities": _bytes([json.dumps(e) for e in pipe.ner(columns["text"], batch_size=size)])}
        if self.task == "fill-mask":
            fills = pipe.fill_mask(columns["text"], top_k=self.top_k, batch_size=size)
            return {"fills": _bytes([json.dumps(f) for f in fills])}
        if self.task == "qa":
            answers = pipe.qa(columns["question"], columns["context"])
            return {
                "answer": _bytes([a["answer"] for a in answers]),
                "score": np.array([[a["score"]] for a in answers], dtype=np.float32),
                "start": np.array([[a["start"]] for a in answers], dtype=np.int64),
                "end": np.array([[a["end"]] for a in answers], dtype=np.int64),
            }
        raise UserError(f"task {self.task!r} cannot be served")

    # ------------------------------------------------------------------------------------------ generation

    def _read_prompts(self, request) -> list[dict]:
        """One item per row: prompt, max_new_tokens, Sampling, stop strings."""
        prompts = _texts(request, "text")
        rows = len(prompts)
        if self.decoupled and rows != 1:
            raise UserError(
                f"the streaming model takes one prompt per request (got {rows}); send one request each"
            )

        def column(name: str, default):
            values = _rows(request, name, rows)
            return [default] * rows if values is None else [v.item() for v in values]

        max_new = column("max_new_tokens", self.max_new_tokens)
        temperature = column("temperature", 0.0)
        top_k = column("top_k", 0)
        top_p = column("top_p", 1.0)
        penalty = column("repetition_penalty", 1.0)
        seed = column("seed", None)
        stop_tensor = pb_utils.get_input_tensor_by_name(request, "stop")
        stops: list[list[str]] = [[] for _ in range(rows)]
        if stop_tensor is not None:
            values = stop_tensor.as_numpy().reshape(rows, -1) if rows else []
            stops = [[bytes(v).decode("utf-8", "replace") for v in row if len(v)] for row in values]
        items = []
        for row in range(rows):
            sampling = Sampling(
                temperature=float(temperature[row]),
                top_k=int(top_k[row]),
                top_p=float(top_p[row]),
                repetition_penalty=float(penalty[row]),
                seed=None if seed[row] is None else int(seed[row]),
            )
            if int(max_new[row]) < 1:
                raise UserError(f"max_new_tokens must be ≥ 1 (got {int(max_new[row])})")
            items.append(
                {
                    "prompt": prompts[row],
                    "max_new": int(max_new[row]),
                    "sampling": sampling,
                    "stop": stops[row],
                }
            )
        return items

    def _generate(self, requests: list) -> list | None:
        responses: list = [None] * len(requests)
        senders = [r.get_response_sender() for r in requests] if self.decoupled else None
        results: dict[int, list[dict]] = {}  # request → per-row {"ids", "text", "finish"}
        groups: dict[tuple, list[tuple[int, int, dict]]] = {}
        for index, request in enumerate(requests):
            try:
                items = self._read_prompts(request)
            except UserError as exc:
                self._fail(index, exc, responses, senders)
                continue
            results[index] = [{"ids": [], "text": [], "finish": "length", "done": False} for _ in items]
            for row, item in enumerate(items):
                sampling = item["sampling"]
                # greedy rows batch; a sampled row runs alone (its own random stream, as in the runtime)
                key = (
                    ("greedy", item["max_new"], tuple(item["stop"]), sampling.repetition_penalty)
                    if sampling.greedy
                    else ("sampled", index, row)
                )
                groups.setdefault(key, []).append((index, row, item))
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                self._generate_group(members[start : start + self.batch_size], results, responses, senders)
        if self.decoupled:
            return None
        for index, rows in results.items():
            if responses[index] is not None:
                continue
            width = max(len(r["ids"]) for r in rows)
            ids = np.full((len(rows), width), -1, dtype=np.int64)  # rows of one request padded with -1
            for row, r in enumerate(rows):
                ids[row, : len(r["ids"])] = r["ids"]
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[
                    _tensor("completion", _bytes(["".join(r["text"]) for r in rows])),
                    _tensor("ids", ids),
                    _tensor("finish", _bytes([r["finish"] for r in rows])),
                ]
            )
        return responses

    def _generate_group(self, members, results, responses, senders) -> None:
        """Stream one batch of rows; on a UserError before any token, retry the rows alone to isolate it."""
        try:
            self._stream(members, results, senders)
        except UserError as exc:
            if len(members) == 1 or any(results[i][r]["ids"] for i, r, _ in members):
                for index, _, _ in members:
                    self._fail(index, exc, responses, senders, results)
                return
            for member in members:
                try:
                    self._stream([member], results, senders)
                except Exception as inner:
                    self._fail(member[0], inner, responses, senders, results)
        except Exception as exc:
            pb_utils.Logger.log_error(f"trtpipe: {self.name}: {traceback.format_exc()}")
            for index, _, _ in members:
                self._fail(index, exc, responses, senders, results)

    def _stream(self, members, results, senders) -> None:
        first = members[0][2]
        prompts = [item["prompt"] for _, _, item in members]
        tokens = self.generator.stream(prompts, first["max_new"], first["sampling"], first["stop"])
        for token in tokens:
            index, row, _ = members[token.row]
            result = results[index][row]
            result["ids"].append(token.id)
            result["text"].append(token.text)
            if token.finish:
                result["finish"] = token.finish
                result["done"] = True
            if senders is not None:
                response = pb_utils.InferenceResponse(
                    output_tensors=[
                        _tensor("completion", _bytes([token.text])),
                        _tensor("ids", np.array([[token.id]], dtype=np.int64)),
                        _tensor("finish", _bytes([token.finish or ""])),
                    ]
                )
                senders[index].send(response)
                if token.finish:
                    senders[index].send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _fail(self, index: int, exc: BaseException, responses: list, senders, results=None) -> None:
        if senders is None:
            responses[index] = _error(exc)
            return
        finished = results is not None and index in results and all(r["done"] for r in results[index])
        if responses[index] is None and not finished:
            responses[index] = "failed"  # a streamed request gets exactly one final response
            senders[index].send(_error(exc), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
