"""CLI: `run` a bundle's encoder task on text (labels, entities, answers, mask fills, embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import warn
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.text import TextTruncated
from ._common import (
    BackendOpt,
    BundleArg,
    JsonOpt,
    QuietOpt,
    ThreadsOpt,
    VariantOpt,
    command,
    print_json,
    read_lines,
    read_text,
)


@command("run")
def run_cmd(
    bundle: BundleArg,
    texts: Annotated[
        list[str] | None, typer.Argument(help="input texts (fill-mask: include [MASK])", show_default=False)
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", help="UTF-8 file, one text per line")] = None,
    text_pair: Annotated[
        list[str] | None,
        typer.Option("--text-pair", help="second segment for sentence-pair classification (one per text)"),
    ] = None,
    question: Annotated[str | None, typer.Option("--question", help="QA: the question")] = None,
    context: Annotated[str | None, typer.Option("--context", help="QA: the context")] = None,
    context_file: Annotated[
        Path | None, typer.Option("--context-file", help="QA: read the context from a UTF-8 file")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="labels (classify) or fills (fill-mask) to show")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="texts per batch (length-bucketed)")] = 32,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="cut texts longer than the model's limit (with a warning)")
    ] = False,
    check_finite: Annotated[
        bool, typer.Option("--check-finite", help="fail if any output is NaN/Inf, naming it")
    ] = False,
    backend: BackendOpt = "ort-cpu",
    variant: VariantOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Answer the bundle's task for some text: labels, entities, answers, mask fills or embeddings."""
    from ..runtime import load_pipeline
    from .render import print_task_result

    loaded = Bundle.load(bundle)
    if loaded.is_decoder:
        raise UserError(f'{bundle} is a GPT-2 bundle; use `trtpipe generate {bundle} "prompt"`')
    items = list(texts or [])
    if file is not None:
        items += read_lines(file)
    if context_file is not None:
        context = read_text(context_file)
    if loaded.task == "qa":
        question = question or (items[0] if items else None)
        if not question or not context:
            raise UserError("qa needs --question Q and --context C (or --context-file F)")
    elif not items:
        raise UserError("no input text: pass TEXT arguments or --file FILE")
    if top_k < 1:
        raise UserError(f"--top-k must be ≥ 1 (got {top_k})")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load_pipeline(
            loaded, backend=backend, variant=variant, threads=threads, check_outputs=check_finite
        )
    task = loaded.task
    with warnings.catch_warnings(record=True) as caught:  # the runtime's truncation warnings, as red lines
        warnings.simplefilter("always", TextTruncated)
        result = _answer(pipe, task, items, text_pair, question, context, top_k, batch_size, truncate)
    for message in caught:
        if issubclass(message.category, TextTruncated):
            warn(str(message.message))
    if as_json:
        print_json(
            {
                "bundle": str(bundle),
                "task": task,
                "random_weights": loaded.random_weights,
                "random_head": loaded.random_head,
                "inputs": items if task != "qa" else {"question": question, "context": context},
                "result": result,
            }
        )
        return
    if loaded.random_weights:
        warn(f"{loaded.name} has random weights: these outputs are meaningless")
    elif loaded.random_head:
        warn(
            f"{loaded.name}: the {task} head is randomly initialised (the checkpoint has none): these answers are "
            "meaningless until the model is fine-tuned for the task"
        )
    print_task_result(task, items, result, question=question)


def _answer(pipe, task, items, text_pair, question, context, top_k, batch_size, truncate):
    if task == "qa":
        return pipe.qa(question=question, context=context)
    if task == "classify":
        return pipe.classify(items, text_pair, top_k=top_k, batch_size=batch_size, truncate=truncate)
    if task == "ner":
        return pipe.ner(items, batch_size=batch_size, truncate=truncate)
    if task == "fill-mask":
        top = max(top_k, 5) if top_k == 1 else top_k
        return pipe.fill_mask(items, top_k=top, batch_size=batch_size, truncate=truncate)
    return pipe.embed(items, batch_size=batch_size, truncate=truncate)
