"""Benchmarks: the statistics, the report files and schema, peers side by side, skipped backends, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from trtpipe.benchmark.stats import summarize
from trtpipe.cli import app


def test_percentiles_cov_and_throughput_on_synthetic_timings():
    samples = [0.010] * 98 + [0.020, 0.110]  # seconds
    stats = summarize(samples, items_per_sample=8)
    assert stats["n"] == 100
    assert stats["p50_ms"] == pytest.approx(10.0)
    assert stats["p99_ms"] == pytest.approx(np.percentile(np.array(samples) * 1e3, 99))
    assert stats["mean_ms"] == pytest.approx(11.1)
    assert stats["sd_ms"] == pytest.approx(np.std(np.array(samples) * 1e3, ddof=1))
    assert stats["cov"] == pytest.approx(stats["sd_ms"] / stats["mean_ms"])
    assert stats["noisy"] is True  # one 110 ms outlier makes the CoV large
    assert stats["qps"] == pytest.approx(8 / 0.0111)
    steady = summarize([0.010, 0.0101, 0.0099, 0.010])
    assert steady["noisy"] is False and steady["min_ms"] == pytest.approx(9.9)
    assert summarize([])["n"] == 0
    single = summarize([0.010])  # one sample: no spread was measured, so none is reported
    assert single["p50_ms"] == pytest.approx(10.0)
    assert single["sd_ms"] is None and single["cov"] is None and single["noisy"] is None


def test_tail_is_the_median_of_per_round_p99s():
    """One bad moment of the machine lands in one round and leaves the median of the per-round p99s alone; a stall
    of ours recurs in every round and moves it."""
    from trtpipe.benchmark.stats import per_round_p99

    steady = [0.010] * 128
    vm = [list(steady) for _ in range(5)]
    vm[2][40:48] = [0.030] * 8  # a burst of slow steps in one round: the machine was busy for a moment
    pooled = summarize([s for r in vm for s in r])
    tail = per_round_p99(vm)
    assert tail["rounds"] == 5 and tail["samples_per_round"] == 128
    assert tail["p99_ms_round_median"] == pytest.approx(10.0)
    assert tail["p99_ms_per_round"][2] > 20 and pooled["p99_ms"] > 20  # the pooled p99 takes the burst
    ours = [list(steady) for _ in range(5)]
    for r in ours:
        r[0] = r[64] = 0.030  # the same two steps slow in every round
    assert per_round_p99(ours)["p99_ms_round_median"] > 20
    assert tail["p50_ms_per_round"] == pytest.approx([10.0] * 5)
    assert per_round_p99([[], []]) == {
        "rounds": 0,
        "samples_per_round": 0,
        "p50_ms_per_round": [],
        "p99_ms_per_round": [],
        "p99_ms_round_median": None,
    }


def test_our_decode_step_is_timed_token_to_token_like_the_peers(make_bundle, monkeypatch):
    """TPOT covers everything between two tokens the caller receives — the graph call and the loop's own Python
    (sampling, detokenising) — as the peers' clocks do; it once timed the graph call alone."""
    import time

    import trtpipe.runtime.generate as generate_module
    from trtpipe.benchmark.decode import OursDecoder
    from trtpipe.runtime import Bundle

    original = generate_module.sample_next

    def slow(*args, **kwargs):
        time.sleep(0.005)
        return original(*args, **kwargs)

    monkeypatch.setattr(generate_module, "sample_next", slow)
    bundle = Bundle.load(make_bundle("tiny-gpt2", "generate"))
    timed = OursDecoder(bundle, None, 1).run([5, 6, 7], 6)
    assert len(timed.steps) == 5 and len(timed.ids) == 6
    assert min(timed.steps) >= 0.005 and timed.ttft >= 0.005


def test_encoder_benchmark_writes_every_report(make_bundle, tmp_path):
    path = make_bundle("tiny-bert", "embed")
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--engine",
            str(path),
            "--batch",
            "1,2",
            "--seq",
            "16",
            "--iters",
            "2",
            "--rounds",
            "2",
            "--warmup",
            "1",
            "--baseline",
            "torch",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / f"benchmark-{path.name}.json").read_text())
    assert report["schema"] == "trtpipe.benchmark/1"
    assert {"cpu", "logical_cores", "threads", "versions"} <= set(report["env"])
    labels = [(r["label"], r["batch"]) for r in report["encoder"]]
    assert labels == [
        ("trtpipe ort-cpu fp32", 1),
        ("PyTorch eager", 1),
        ("trtpipe ort-cpu fp32", 2),
        ("PyTorch eager", 2),
    ]
    for row in report["encoder"]:
        lat = row["latency"]
        assert lat["n"] == 4 and lat["p50_ms"] > 0 and lat["p99_ms"] >= lat["p50_ms"]
        assert row["peak_rss"] > 20 * 2**20  # measured in its own process
    torch_rss = [r["peak_rss"] for r in report["encoder"] if r["backend"] == "torch"][0]
    ours_rss = [r["peak_rss"] for r in report["encoder"] if r["backend"] == "ort-cpu"][0]
    assert (
        torch_rss > ours_rss
    )  # the torch-free runtime is leaner, and rows do not inherit each other's memory
    with open(out / f"benchmark-{path.name}.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and float(rows[0]["p50_ms"]) > 0
    assert (out / f"benchmark-{path.name}.md").read_text().count("\n|") >= 5
    png = out / f"benchmark-{path.name}-latency.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_decoder_benchmark_with_peers(make_bundle, tmp_path):
    path = make_bundle("tiny-gpt2", "generate")
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--engine",
            str(path),
            "--prompt-len",
            "8",
            "--new-tokens",
            "6",
            "--rounds",
            "1",
            "--baseline",
            "genai",
            "--no-memory",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / f"benchmark-{path.name}.json").read_text())
    rows = report["decoder"]
    assert [r["kind"] for r in rows] == ["ours", "genai"]
    for row in rows:
        assert row["ttft"]["n"] == 1 and row["tpot"]["n"] == 5 and row["tokens_per_s"] > 0
        assert len(row["tpot_by_past"]) == 5 and row["tpot_by_past"][0][0] == 9
        assert [len(series) for series in row["steps_ms"]] == [5]  # one series per round, step by step
        tail = row["tpot_rounds"]
        assert tail["rounds"] == 1 and tail["p99_ms_round_median"] == pytest.approx(
            np.percentile(row["steps_ms"][0], 99)
        )
    assert rows[0]["ids"] == rows[1]["ids"]  # same greedy tokens: identical inputs, identical work
    assert report["floors"][0]["tpot_floor_ms"] > 0 and report["floors"][0]["ttft_floor_ms"] > 0
    assert (out / f"benchmark-{path.name}-tpot.png").stat().st_size > 5000
    assert (out / f"benchmark-{path.name}-steps.png").stat().st_size > 5000
    assert "not measured (--no-memory)" in (out / f"benchmark-{path.name}.md").read_text()


@pytest.mark.parametrize("warmup, runs", [(None, 3), ("0", 2), ("3", 5)])
def test_decoder_benchmark_warms_up_as_asked(make_bundle, tmp_path, monkeypatch, warmup, runs):
    """--warmup reaches the GPT-2 benchmark (whole generations, 1 by default); --iters says it does not apply."""
    from trtpipe.benchmark import decode

    calls = []
    real = decode.make_rows

    def counted(*args, **kwargs):
        rows = real(*args, **kwargs)
        wrapped = []
        for kind, factory in rows:

            def build(factory=factory):
                runner = factory()
                run = runner.run

                def counting(prompt, new_tokens):
                    calls.append(len(prompt))
                    return run(prompt, new_tokens)

                runner.run = counting
                return runner

            wrapped.append((kind, build))
        return wrapped

    monkeypatch.setattr(decode, "make_rows", counted)
    path = make_bundle("tiny-gpt2", "generate")
    args = ["benchmark", "--engine", path, "--prompt-len", "8", "--new-tokens", "3", "--rounds", "2"]
    args += ["--no-memory", "--out", tmp_path, "--iters", "7"] + (
        [] if warmup is None else ["--warmup", warmup]
    )
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert calls == [8] * runs  # warm-up generations + 2 measured rounds, our runtime only
    assert "a GPT-2 round is one generation" in " ".join(result.output.split())
    report = json.loads((tmp_path / f"benchmark-{path.name}.json").read_text())
    assert report["config"]["warmup"] == runs - 2 and report["config"]["iters"] is None
    assert report["decoder"][0]["ttft"]["n"] == 2


def test_missing_backends_are_skipped_with_their_reason(make_bundle, tmp_path):
    path = make_bundle("tiny-bert", "embed")
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--engine",
            str(path),
            "--backend",
            "all",
            "--batch",
            "1",
            "--seq",
            "8",
            "--iters",
            "1",
            "--rounds",
            "1",
            "--no-memory",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / f"benchmark-{path.name}.json").read_text())
    skipped = " ".join(report["skipped"])
    assert "ort-cuda" in skipped and "CUDAExecutionProvider" in skipped
    assert "trt:" in skipped and "doctor" in skipped
    assert any(r["backend"] == "ort-cpu" for r in report["encoder"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "gpu"], "unknown backend 'gpu'"),
        (["--variant", "int3"], "no variant 'int3'"),
        (["--iters", "0"], "--iters"),
        (["--seconds", "-1"], "--seconds must be > 0"),
        (["--batch", "one"], "comma-separated integers"),
        (["--batch", "0"], "must be ≥ 1"),
        (["--out", "{file}/sub"], "cannot create the output directory"),
    ],
)
def test_benchmark_bad_input(make_bundle, tmp_path, args, message):
    path = make_bundle("tiny-bert", "embed")
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--engine",
            str(path),
            "--no-memory",
            *[a.format(file=tmp_path / "afile") for a in args],
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_compare_bert_albert_gpt2(make_bundle, tmp_path):
    paths = [
        make_bundle("tiny-bert", "classify"),
        make_bundle("tiny-albert", "classify"),
        make_bundle("tiny-gpt2", "generate"),
    ]
    result = CliRunner().invoke(
        app, ["compare", *map(str, paths), "--seq", "16", "--no-memory", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    rows = {r["family"]: r for r in report["rows"]}
    assert rows["albert"]["unique_weight_bytes"] < rows["bert"]["unique_weight_bytes"]
    assert rows["gpt2"]["tpot"]["p50_ms"] > 0 and rows["bert"]["forward"]["p50_ms"] > 0
    assert any("ALBERT stores" in note for note in report["findings"])
    assert (tmp_path / "compare.png").stat().st_size > 5000 and "| model |" in (
        tmp_path / "compare.md"
    ).read_text()


@pytest.mark.parametrize("task", ["classify", "embed"])
def test_workload_bucketed_vs_fixed_vs_optimum(make_bundle, tmp_path, task):
    """Same outputs from every pipeline: labels, or (embed) sentence vectors — the Optimum pipeline's batched
    feature-extraction rows come padded, and pooling the padding too once gave cosines of 0.4."""
    from trtpipe.benchmark.workload import default_texts, run_workload

    path = make_bundle("tiny-bert", task)
    texts = default_texts(48)
    report = run_workload(
        path, texts, batch_size=8, threads=1, baselines=["optimum"], out_dir=tmp_path, rounds=1
    )
    rows = report["rows"]
    assert [r["label"].split()[0] for r in rows] == ["trtpipe", "trtpipe", "Optimum"]
    for row in rows:
        assert row["agreement_with_first_row"] >= (0.9999 if task == "embed" else 0.99)
        assert row["texts_per_s"] > 0
    assert (tmp_path / f"workload-{path.name}.png").exists() and (
        tmp_path / f"workload-{path.name}.csv"
    ).exists()


def test_serving_workloads_are_real_mixed_and_fit_the_bundle(make_bundle):
    from trtpipe.benchmark.serve import encoder_texts, generation_requests
    from trtpipe.runtime import Bundle
    from trtpipe.runtime.text import TextEncoder

    encoder_bundle = Bundle.load(make_bundle("tiny-bert", "classify"))
    texts = encoder_texts(encoder_bundle, count=64)
    lengths = [len(e.ids) for e in TextEncoder(encoder_bundle).plain.encode_batch(texts)]
    assert len(texts) == 64 and max(lengths) <= encoder_bundle.max_length and max(lengths) > 3 * min(lengths)
    assert texts == encoder_texts(encoder_bundle, count=64)  # the same texts for every mode and run
    decoder_bundle = Bundle.load(make_bundle("tiny-gpt2", "generate"))
    requests = generation_requests(decoder_bundle, count=40)
    positions = decoder_bundle.limits["max_positions"]
    assert all(16 <= r.max_new_tokens <= 128 for r in requests)
    assert all(r.prompt_tokens + r.max_new_tokens <= positions for r in requests)
    assert min(r.prompt_tokens for r in requests) < 40 and max(r.prompt_tokens for r in requests) > 100
    assert 0 < sum(r.temperature > 0 for r in requests) < 40  # greedy and sampled


def test_stream_load_summary_and_cells_never_invent_a_number():
    from trtpipe.benchmark.serve import cell, load_table, ratio
    from trtpipe.serving.load import summarize_streams

    records = [
        {"sent": 0.0, "token_times": [0.1, 0.12, 0.14, 0.16]},  # TTFT 100 ms, TPOT 20 ms
        {"sent": 1.0, "token_times": [1.3, 1.34]},  # TTFT 300 ms, TPOT 40 ms
        {"sent": 2.0, "token_times": []},  # nothing came back: not a completed request
    ]
    summary = summarize_streams(records, seconds=2.0)
    assert summary["completed"] == 2 and summary["tokens"] == 6 and summary["tokens_per_s"] == 3.0
    assert summary["ttft_p50_ms"] == 200.0 and summary["tpot_p50_ms"] == 30.0
    assert summary["p99_ms"] == pytest.approx(160 + 0.99 * 180, abs=0.01)  # latencies 160 and 340 ms
    empty = summarize_streams([], seconds=1.0)
    assert empty["tpot_p99_ms"] is None and cell(empty["tpot_p99_ms"]) == "not measured"
    assert cell(float("nan")) == "not measured" and cell(0.0) == "0.0"
    rows = [
        {"mode": "on", "clients": 8, "tokens_per_s": 50.0},
        {"mode": "on", "clients": 1, "tokens_per_s": None},
    ]
    assert ratio(rows, "tokens_per_s", ("on", 8), ("on", 1)) is None
    assert "not measured" in load_table(rows, generation=True)[2]


def test_accuracy_figures_are_looked_up_by_spec_key_and_a_missing_one_is_never_a_number():
    from trtpipe.benchmark.figures import REFERENCE, mean_min, metric, spec_key

    ours, int8, optimum = (
        spec_key("ours", None, "ort-cpu"),
        spec_key("ours", "int8", "ort-cpu"),
        spec_key("optimum", "int8", "optimum"),
    )
    assert ours == spec_key("ours", "fp32", "ort-cpu") and len({ours, int8, optimum}) == 3
    measured = {
        ours: REFERENCE,
        int8: {"sentence_mean": 0.99171, "sentence_min": 0.98694},
        optimum: "row not built: optimum is not installed",
    }
    assert mean_min(measured, int8, "sentence_mean", "sentence_min") == "0.9917 / 0.9869"
    assert mean_min(measured, ours, "sentence_mean", "sentence_min") == "reference"
    assert (
        mean_min(measured, optimum, "sentence_mean", "sentence_min")
        == "not measured (row not built: optimum is not installed)"
    )
    # a row nobody measured, a metric that is missing or not finite: said so, never a number
    missing = mean_min(measured, spec_key("torch", None, "torch"), "sentence_mean", "sentence_min")
    assert missing == "not measured (no accuracy run for this row)"
    assert mean_min({int8: {"sentence_mean": 0.99}}, int8, "sentence_mean", "sentence_min") == (
        "not measured (sentence_min missing)"
    )
    nan = {int8: {"sentence_mean": float("nan"), "sentence_min": 0.9}}
    assert mean_min(nan, int8, "sentence_mean", "sentence_min") == "not measured (sentence_mean missing)"
    for text in (missing, mean_min(measured, ours, "a", "b")):
        assert not any(ch.isdigit() for ch in text)
    assert metric(measured, int8, "sentence_min") == pytest.approx(0.98694)
    assert metric(measured, ours, "sentence_min") is None and metric(measured, optimum, "x") is None


def test_each_encode_row_carries_the_key_of_the_spec_that_built_it(make_bundle):
    """The Optimum int8 row's variant reads "int8 (avx512_vnni, per-tensor)"; its accuracy must still be found under
    the key of its spec ("optimum", "int8", "optimum"), as bench/optimize.py looks it up."""
    from trtpipe.benchmark.encode import build_row, run_encode
    from trtpipe.benchmark.figures import spec_key
    from trtpipe.runtime import Bundle

    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    specs = [("ours", None, "ort-cpu"), ("optimum", "int8", "optimum")]
    results = run_encode(bundle, specs, [(1, 8)], threads=1, rounds=1, iters=1, warmup=1)
    assert [r.error for r in results] == [None, None]
    assert [r.key for r in results] == [spec_key(*spec) for spec in specs]
    row = build_row(bundle, "optimum", "int8", "optimum", 1)
    assert row.variant != "int8" and results[1].label == row.label  # the label is not the key
    assert results[1].key == spec_key("optimum", "int8", "optimum")


# ------------------------------------------------------------- a figure that was not measured is never a number


def _bench(name: str):
    """A bench/ script as a module (they import their sibling `common`)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "bench"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_report_cells_say_not_measured_instead_of_a_number():
    from trtpipe.benchmark.report import figure, markdown, ratio_text

    assert figure(None) == "not measured"
    assert figure(None, 0, "--no-memory") == "not measured (--no-memory)"
    assert figure(0.0) == "0.00" and figure(12.345, 1) == "12.3"
    assert ratio_text(None, 2.0) == "not measured" and ratio_text(3.0, 2.0) == "1.50"
    encoder = {
        "label": "trtpipe ort-cpu fp32",
        "backend": "ort-cpu",
        "variant": "fp32",
        "batch": 1,
        "seq": 8,
        "latency": {"p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.2, "mean_ms": 1.0, "sd_ms": 0.1, "cov": 0.1},
        "items_per_s": 1000.0,
        "peak_rss": None,
        "peak_rss_note": "--no-memory",
    }
    decoder = {
        "label": "trtpipe fp32 (in-place KV)",
        "prompt_len": 8,
        "new_tokens": 4,
        "ttft": {"p50_ms": 2.0},
        "tpot": {"p50_ms": 1.0, "p99_ms": 3.0},
        "tpot_rounds": {},  # per-round p99s missing: not measured, and no ratio made up from them
        "tokens_per_s": 500.0,
        "peak_rss": None,
        "peak_rss_note": "the measuring process ran past 600 s",
    }
    text = markdown({"encoder": [encoder], "decoder": [decoder], "notes": ["prompt length 512 does not fit"]})
    assert "| 1000.0 | not measured (--no-memory) |" in text
    assert "| 1.00 | not measured | not measured | 3.00 |" in text
    assert "not measured (the measuring process ran past 600 s)" in text
    assert "- note: prompt length 512 does not fit" in text
    assert "| 0 |" not in text and "| 0.00 |" not in text


def test_compare_and_workload_tables_never_print_an_unmeasured_figure():
    from trtpipe.benchmark.compare import compare_markdown
    from trtpipe.benchmark.workload import NO_BATCH_TIMES, workload_markdown

    row = {
        "name": "tiny-bert-classify",
        "family": "bert",
        "random_weights": True,
        "parameters": None,
        "unique_weight_bytes": None,
        "onnx_bytes": 2**20,
        "onnx_over_params": None,
        "variant_bytes": {"fp32": 2**20},
        "forward": {"p50_ms": 1.5},
        "tpot": None,
        "peak_rss": None,
        "peak_rss_note": "--no-memory",
    }
    decoder = {
        **row,
        "name": "tiny-gpt2-generate",
        "family": "gpt2",
        "tpot": {"n": 0},
        "peak_rss": 300 * 2**20,
    }
    text = compare_markdown({"seq": 16, "rows": [row, decoder], "findings": []})
    first, second = text.splitlines()[2:4]
    assert "not measured (not in the manifest) M" in first and "| – |" in first  # an encoder has no TPOT
    assert "not measured (--no-memory)" in first and "| 300 |" in second
    assert "| 1.5 | not measured |" in second  # a decoder's TPOT that has no p50
    rows = [
        {
            "label": "ours",
            "texts_per_s": 10.0,
            "batch_latency": {"n": 2, "p50_ms": 5.0, "p99_ms": 6.0},
            "speedup_of_bucketed": 1.0,
            "agreement_with_first_row": 1.0,
        },
        {
            "label": "Optimum",
            "texts_per_s": 5.0,
            "batch_latency": {"n": 0, "not_measured": NO_BATCH_TIMES},
            "speedup_of_bucketed": 2.0,
            "agreement_with_first_row": 1.0,
        },
    ]
    text = workload_markdown({"task": "classify", "rows": rows})
    assert "| 5.0 | 6.0 |" in text
    assert f"| not measured ({NO_BATCH_TIMES}) | not measured ({NO_BATCH_TIMES}) |" in text


def test_bench_scripts_say_not_measured_instead_of_a_number(monkeypatch):
    optimize = _bench("optimize")
    assert optimize.greedy_match_text({}) == "greedy-match length not measured (the gate did not record it)"
    assert (
        optimize.greedy_match_text({"greedy_match_tokens_mean": 31.5})
        == "greedy-match length 31.5 of 32 tokens"
    )
    demo = _bench("demo_metrics")
    assert "0 s" not in demo.last_run_line({}, {}) and "not measured" in demo.last_run_line({}, {})
    line = demo.last_run_line(
        {"trained": ["a", "b"], "seconds": 12.4}, {"a": {"train": {"precision": "fp32"}}, "b": {}}
    )
    assert line.startswith("Last `make demo-models` run: 2 model(s) trained in 12 s")
    assert "fp32, precision not recorded" in line
    from trtpipe.benchmark.serve import load_table

    nothing = {"mode": "on", "clients": 8, "completed": 0, "throughput_rps": 0.0, "p50_ms": float("nan")}
    for generation in (False, True):
        row = load_table([{**nothing, "tpot_p50_ms": None}], generation)[-1]
        assert "nan" not in row and "None" not in row and "not measured" in row
    serve = _bench("serve_load")
    stuck = serve.soak_report({"completed": 0, "errors": 0, "tokens_per_s": 0.0, "rss": [(0, 2**30)] * 5}, 10)
    assert "0 requests" in stuck and "❌ missed" in stuck and "✅" not in stuck  # nothing served is no pass
    fine = serve.soak_report({"completed": 90, "errors": 0, "tokens_per_s": 9.0, "rss": [(0, 2**30)] * 5}, 10)
    assert "0.00 %" in fine and "✅" in fine
    decode = _bench("decode")
    assert decode.profile_cell({"MatMul": 1.234}, "MatMul") == "1.23"
    assert decode.profile_cell({"MatMul": 1.234}, "Gemm") == "–"  # the profiler saw no such kernel there
    common = _bench("common")
    import trtpipe.benchmark.env as env

    real = env.environment
    monkeypatch.setattr(env, "environment", lambda threads=None: {**real(threads), "memory_bytes": None})
    line = common.environment_line()
    assert "0 GiB" not in line and "memory not measured" in line
    from trtpipe.benchmark import (
        floors,
    )  # the line names the CPU's instruction sets (two "AMD EPYC" VMs differ)

    monkeypatch.setattr(floors, "cpu_flags", lambda: ("AuthenticAMD", {"avx2", "avx512_bf16", "fpu"}, None))
    assert f"{env.cpu_model()} (avx2, avx512_bf16), " in common.environment_line()
    assert env.isa_flags() == ["avx2", "avx512_bf16"]
    monkeypatch.setattr(floors, "cpu_flags", lambda: ("", set(), None))
    assert "()" not in common.environment_line() and env.environment()["cpu_flags"] == []


def test_the_compute_roof_is_the_machines_and_names_what_set_it(monkeypatch):
    """The roof is the higher of the fastest engine's GEMM and the nominal peak; an engine that cannot run says
    why; the nominal peak follows the vector width and FMA units the CPU has (Zen 4's AVX-512 counts as 2 × 256,
    Zen 5's as 2 × 512 except on its mobile parts)."""
    from trtpipe.benchmark import floors

    epyc = ("AuthenticAMD", {"avx2", "avx512f", "avx512_vnni"}, 2.6e9)
    xeon = ("GenuineIntel", {"avx2", "avx512f"}, 2.0e9)
    monkeypatch.setattr(floors, "cpu_flags", lambda: epyc)
    monkeypatch.setattr(floors, "cpu_family", lambda: (0x19, 0x11))  # Zen 4 (Genoa)
    assert floors.nominal_peak("fp32", 2)[0] == 2 * 8 * 2 * 2 * 2.6e9
    assert floors.nominal_peak("int8", 2)[0] == 4 * floors.nominal_peak("fp32", 2)[0]
    monkeypatch.setattr(floors, "cpu_family", lambda: (0x1A, 0x02))  # Zen 5 (Turin)
    assert floors.nominal_peak("fp32", 2) == (2 * 16 * 2 * 2 * 2.6e9, floors.nominal_peak("fp32", 2)[1])
    assert "Zen 5" in floors.nominal_peak("fp32", 2)[1]
    monkeypatch.setattr(floors, "cpu_family", lambda: (0x1A, 0x24))  # Zen 5 mobile (Strix Point)
    assert floors.nominal_peak("fp32", 2)[0] == 2 * 8 * 2 * 2 * 2.6e9
    monkeypatch.setattr(floors, "cpu_family", lambda: (None, None))
    assert floors.nominal_peak("fp32", 2)[0] == 2 * 8 * 2 * 2 * 2.6e9
    monkeypatch.setattr(floors, "cpu_flags", lambda: xeon)
    assert floors.nominal_peak("fp32", 1)[0] == 16 * 2 * 2 * 2.0e9
    assert floors.nominal_peak("int8", 1) == (None, "no VNNI")

    def broken(precision, threads, n):
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(floors, "cpu_flags", lambda: epyc)
    monkeypatch.setattr(floors, "cpu_family", lambda: (0x19, 0x11))
    monkeypatch.setattr(
        floors, "ENGINES", {"slow": lambda p, t, n: 50e9, "fast": lambda p, t, n: 120e9, "missing": broken}
    )
    roof = floors.measure_roof("fp32", 2)
    assert roof.fastest == ("fast", 120e9) and roof.engines["missing"] is None
    assert "openvino" in roof.why_not["missing"]
    assert roof.value == roof.nominal == 166.4e9 and roof.source.startswith("nominal peak")
    assert "fastest measured: fast 120 GFLOP/s (72% of it)" in roof.describe()
    monkeypatch.setattr(floors, "ENGINES", {"fast": lambda p, t, n: 200e9})
    roof = floors.measure_roof("fp32", 2)
    # an engine above the nominal clock (a boost clock above the one /proc/cpuinfo reports) sets the roof
    assert roof.value == 200e9 and roof.source == "fast 2048³ GEMM"
    table = floors.roofs_markdown([roof])
    assert "| fp32 (GFLOP/s) | 200 | 166 (" in table and "200, fast 2048³ GEMM |" in table


def test_the_console_table_prints_labels_as_text_not_rich_markup():
    """A row label like "trtpipe int4 (ping-pong KV) [ov]" keeps its "[ov]": rich would read it as a style tag."""
    from trtpipe.benchmark.report import print_table
    from trtpipe.console import out

    row = {
        "label": "trtpipe int4 (ping-pong KV) [ov]",
        "backend": "ov",
        "variant": "int4",
        "batch": 1,
        "seq": 8,
    }
    report = {"bundle": "b", "encoder": [{**row, "latency": {"p50_ms": 1.5}, "items_per_s": 2.0}]}
    with out.capture() as captured:
        print_table(report)
    assert "[ov]" in captured.get()


def test_bench_rebuilds_an_int8_variant_an_older_quantiser_wrote(monkeypatch, tmp_path):
    """An int8 whose report names other activations (per tensor, or per row before the bias fix) is rebuilt
    before it is measured; a current one and other precisions are left alone."""
    from trtpipe.optimize import variants
    from trtpipe.runtime import Bundle

    common = _bench("common")
    entries = {"int8": {"report": {"activations": "per row (u8, symmetric)"}}, "int4": {"report": {}}}

    class Loaded:
        variants = entries

    monkeypatch.setattr(Bundle, "load", staticmethod(lambda path: Loaded))
    calls = []
    monkeypatch.setattr(
        variants, "optimize_bundle", lambda path, precision, **kw: calls.append((precision, kw))
    )
    common.ensure_variant(tmp_path, "int8")
    common.ensure_variant(tmp_path, "int4")
    assert calls == [("int8", {"force": True, "overwrite": True})]
    entries["int8"]["report"]["activations"] = variants.ACTIVATIONS
    common.ensure_variant(tmp_path, "int8")
    common.ensure_variant(tmp_path, "int8-wo")  # missing: built, nothing to overwrite
    assert calls[1:] == [("int8-wo", {"force": True, "overwrite": False})]


def test_cpu_family_reads_proc_cpuinfo(tmp_path, monkeypatch):
    """family and model come from the first CPU's lines; a file without them gives (None, None)."""
    import builtins

    from trtpipe.benchmark import floors

    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    )
    fake = tmp_path / "cpuinfo"
    fake.write_text(text + text.replace("26", "25"))
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda f, *a, **k: real_open(fake if f == "/proc/cpuinfo" else f, *a, **k)
    )
    assert floors.cpu_family() == (26, 2)
    fake.write_text("processor\t: 0\n")
    assert floors.cpu_family() == (None, None)


def test_load_line_says_the_load_at_start_and_end_against_the_cores(monkeypatch):
    import os

    common = _bench("common")
    monkeypatch.setattr(os, "getloadavg", lambda: (3.46, 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    line = common.load_line(1.23)
    assert "(2 cores) at the start / end was 1.2 / 3.5; above 2 means other processes" in line
