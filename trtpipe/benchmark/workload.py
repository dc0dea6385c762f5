"""Real workloads: texts of mixed lengths through the whole task pipeline (tokenize → batch → run → postprocess).

Rows, same texts, same batch size, interleaved: our length-bucketed dynamic padding; the same runtime with fixed
padding to max length in input order (the naive baseline); and Optimum's ORTModel in a transformers `pipeline()`
(what Optimum's users run). Outputs are checked equal (labels, or embedding cosine)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..console import info, progress
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from .env import environment
from .stats import summarize

NO_BATCH_TIMES = "transformers.pipeline() does not expose per-batch times"
PIPELINE_TASKS = {"classify": "text-classification", "embed": "feature-extraction"}


def default_texts(n: int = 512) -> list[str]:
    """Mixed-length real text: sentences and whole docstring paragraphs of the offline corpus."""
    from .. import corpus

    sentences = list(corpus.sentences("heldout"))
    paragraphs = [doc for _, doc in corpus.stdlib_docstrings() if 80 < len(doc) < 1500]
    mixed = []
    for i in range(n):
        mixed.append(
            paragraphs[(i * 37) % len(paragraphs)] if i % 3 == 0 else sentences[(i * 11) % len(sentences)]
        )
    return mixed


class OursWorkload:
    def __init__(self, bundle: Bundle, threads: int | None, padding: str):
        import warnings

        from ..runtime.tasks import load_pipeline

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.pipe = load_pipeline(bundle, threads=threads)
        self.pipe.padding = padding
        self.label = (
            "trtpipe pipeline, length-bucketed padding"
            if padding == "bucketed"
            else "trtpipe pipeline, fixed padding to max length"
        )

    def run(self, texts: list[str], batch_size: int):
        import warnings

        from ..runtime.text import TextTruncated

        self.pipe.batch_times = []
        # real text at the model's limit: cutting the long ones is part of the workload, not news
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TextTruncated)
            if self.pipe.task == "embed":
                result = self.pipe.embed(texts, batch_size=batch_size, truncate=True)
            else:
                result = [r["label"] for r in self.pipe.classify(texts, batch_size=batch_size, truncate=True)]
        return result, list(self.pipe.batch_times)


class OptimumPipeline:
    label = "Optimum ORTModel in transformers.pipeline()"

    def __init__(self, bundle: Bundle, threads: int | None):
        import transformers

        from .peers import hf_checkpoint, optimum_model

        if bundle.task not in PIPELINE_TASKS:
            raise UserError(
                f"the Optimum pipeline baseline covers {', '.join(PIPELINE_TASKS)}, not {bundle.task}"
            )
        model = optimum_model(bundle, threads)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_checkpoint(bundle)))
        self.task = bundle.task
        self.max_length = bundle.max_length
        self.pipe = transformers.pipeline(
            PIPELINE_TASKS[bundle.task], model=model, tokenizer=tokenizer, device=-1
        )

    def run(self, texts: list[str], batch_size: int):
        kwargs = {"truncation": True, "max_length": self.max_length}
        if self.task == "embed":
            # batched feature-extraction returns rows padded to the batch: pool each text's own tokens only
            lengths = [len(ids) for ids in self.pipe.tokenizer(texts, **kwargs)["input_ids"]]
        if self.task == "embed":
            outputs = self.pipe(texts, batch_size=batch_size, tokenize_kwargs=kwargs)
            vectors = []
            for out, length in zip(outputs, lengths):
                # [1, S, C] token states → mean pool over the text's own tokens → L2 normalise (sentence-transformers)
                pooled = np.asarray(out[0], dtype=np.float32)[:length].mean(axis=0)
                vectors.append(pooled / max(np.linalg.norm(pooled), 1e-12))
            result = np.stack(vectors)
        else:
            result = [o["label"] for o in self.pipe(texts, batch_size=batch_size, **kwargs)]
        return result, None  # pipeline() does not expose per-batch times: its batch latency is not measured


def _agreement(task: str, a, b) -> float:
    if task == "embed":
        a, b = np.asarray(a), np.asarray(b)
        return float(np.min(np.sum(a * b, axis=1)))
    return float(np.mean([x == y for x, y in zip(a, b)]))


def run_workload(
    bundle_path,
    texts: list[str] | None,
    batch_size: int = 8,
    threads: int | None = 2,
    baselines: list[str] | None = None,
    out_dir: Path | None = None,
    rounds: int = 3,
    fixed: bool = True,
) -> dict:
    """Texts through the task pipeline: our length-bucketed padding, (with `fixed`) the naive fixed padding to the
    model's max length — slow by design: 512 positions for BERT-base — and each baseline, in interleaved rounds."""
    bundle = Bundle.load(bundle_path)
    if bundle.task not in PIPELINE_TASKS:
        raise UserError(f"--workload runs classify and embed bundles (this one is {bundle.task})")
    if batch_size < 1 or rounds < 1:
        raise UserError("--workload-batch and --rounds must be ≥ 1")
    texts = texts or default_texts()
    if not texts:
        raise UserError("the workload file has no texts")
    rows = [OursWorkload(bundle, threads, "bucketed")]
    if fixed:
        rows.append(OursWorkload(bundle, threads, "fixed"))
    for name in baselines or []:
        if name == "optimum":
            rows.append(OptimumPipeline(bundle, threads))
        elif name != "none":
            raise UserError(f"unknown workload baseline {name!r}; use optimum")
    totals = {i: [] for i in range(len(rows))}
    batch_times = {i: [] for i in range(len(rows))}
    outputs = {}
    with progress() as bar:
        task = bar.add_task("workload", total=(rounds + 1) * len(rows))
        for round_index in range(rounds + 1):
            for index, row in enumerate(rows):
                started = time.perf_counter()
                result, times = row.run(texts, batch_size)
                elapsed = time.perf_counter() - started
                bar.advance(task)
                if round_index == 0:
                    outputs[index] = result  # warm-up round: keep outputs for the equality check
                    continue
                totals[index].append(elapsed)
                if times is None:
                    batch_times[index] = None
                elif batch_times[index] is not None:
                    batch_times[index] += times
    results = []
    for index, row in enumerate(rows):
        seconds = float(np.median(totals[index]))
        results.append(
            {
                "label": row.label,
                "texts": len(texts),
                "batch_size": batch_size,
                "texts_per_s": len(texts) / seconds,
                "seconds": seconds,
                "batch_latency": (
                    summarize(batch_times[index])
                    if batch_times[index] is not None
                    else {"n": 0, "not_measured": NO_BATCH_TIMES}
                ),
                "agreement_with_first_row": _agreement(bundle.task, outputs[0], outputs[index]),
            }
        )
    base = results[0]["texts_per_s"]
    for result in results:
        result["speedup_of_bucketed"] = base / result["texts_per_s"]
    report = {
        "schema": "trtpipe.workload/1",
        "bundle": str(bundle.path),
        "task": bundle.task,
        "random_weights": bundle.random_weights,
        "env": environment(threads),
        "rows": results,
        "lengths": summarize([len(t.split()) / 1e3 for t in texts]),
    }
    if out_dir is not None:
        _write_workload(report, Path(out_dir), bundle.name)
    from .report import figure

    for result in results:
        lat = result["batch_latency"]
        why = lat.get("not_measured")
        info(
            f"{result['label']}: {result['texts_per_s']:.1f} texts/s, batch p50 {figure(lat.get('p50_ms'), 1, why)} ms, "
            f"p99 {figure(lat.get('p99_ms'), 1, why)} ms (bucketed is {result['speedup_of_bucketed']:.2f}×; "
            f"agreement {result['agreement_with_first_row']:.4f})"
        )
    return report


def workload_markdown(report: dict) -> str:
    metric = "min embedding cosine" if report["task"] == "embed" else "label agreement"
    lines = [
        f"| row | texts/s | batch p50 ms | batch p99 ms | bucketed speed-up | {metric} vs bucketed |",
        "|---|---|---|---|---|---|",
    ]
    from .report import figure

    for r in report["rows"]:
        lat = r["batch_latency"]
        why = lat.get("not_measured")
        lines.append(
            f"| {r['label']} | {r['texts_per_s']:.1f} | {figure(lat.get('p50_ms'), 1, why)} | "
            f"{figure(lat.get('p99_ms'), 1, why)} | {r['speedup_of_bucketed']:.2f}× | {r['agreement_with_first_row']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _write_workload(report: dict, directory: Path, name: str) -> None:
    from .report import check_out_dir, write_tables

    directory = check_out_dir(directory)
    stem = directory / f"workload-{name}"
    header = ["label", "texts_per_s", "batch_p50_ms", "batch_p99_ms", "speedup_of_bucketed", "agreement"]
    rows = [
        [
            r["label"],
            r["texts_per_s"],
            r["batch_latency"].get("p50_ms"),
            r["batch_latency"].get("p99_ms"),
            r["speedup_of_bucketed"],
            r["agreement_with_first_row"],
        ]
        for r in report["rows"]
    ]
    write_tables(stem, report, workload_markdown(report), header, rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.5))
    ax.barh([r["label"] for r in report["rows"]], [r["texts_per_s"] for r in report["rows"]], color="#1f77b4")
    ax.set_xlabel("texts / s")
    ax.set_title(f"workload throughput · {name}")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
