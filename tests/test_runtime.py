"""The torch-free runtime: import hygiene, the Session contract, feed checks and the task pipelines."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import assert_close, spin_entries

from trtpipe.runtime import Bundle, UserError, load_pipeline, open_session
from trtpipe.runtime.tasks import _aggregate_entities, _best_span
from trtpipe.runtime.text import length_buckets

BLOCKED = ("torch", "transformers", "onnx", "optimum", "onnxscript", "sentence_transformers")


def test_runtime_imports_without_torch_transformers_onnx_or_optimum(make_bundle):
    """A subprocess where importing the heavy libraries fails: the runtime still imports and answers."""
    path = make_bundle("tiny-bert", "classify")
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import trtpipe.runtime as rt
        pipe = rt.load_pipeline({str(path)!r})
        print(pipe.classify(["it works without torch"])[0]["label"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
    """)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("NEGATIVE", "POSITIVE")


def test_session_contract_and_run_into(make_bundle):
    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    session = open_session(bundle, threads=1)
    assert session.backend == "ort-cpu"
    assert session.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert session.output_names == ("last_hidden_state", "sentence_embedding")
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    outputs = session.run(feeds)
    buffer = np.empty((1, 32), dtype=np.float32)
    session.run_into(feeds, {"sentence_embedding": buffer})
    assert_close(buffer, outputs["sentence_embedding"], atol=0, rtol=0, what="run_into")
    # int32 ids are accepted and cast
    as_int32 = {k: v.astype(np.int32) for k, v in feeds.items()}
    assert_close(
        session.run(as_int32)["sentence_embedding"], outputs["sentence_embedding"], what="int32 feeds"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.pop("attention_mask"), "missing input"),
        (lambda f: f.update(extra=np.zeros(1)), "unknown input"),
        (lambda f: f.update(input_ids=f["input_ids"][0]), "expected rank 2"),
        (lambda f: f.update(input_ids=f["input_ids"].astype(np.float32)), "has dtype float32"),
        (lambda f: f.update(attention_mask=np.ones((1, 3), np.int64)), "must agree"),
        (lambda f: f.update(input_ids=np.full((1, 6), 40000, np.int64)), "outside the vocabulary"),
        (lambda f: f.update(input_ids=np.full((1, 6), -1, np.int64)), "outside the vocabulary"),
        (
            lambda f: f.update(
                **{k: np.ones((1, 200), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            ),
            "exceeds the model's 128 positions",
        ),
    ],
)
def test_bad_feeds_are_user_errors(make_bundle, change, message):
    session = open_session(make_bundle("tiny-bert", "embed"))
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    change(feeds)
    with pytest.raises(UserError, match=message):
        session.run(feeds)


def test_unknown_backend_and_variant(make_bundle):
    path = make_bundle("tiny-bert", "embed")
    with pytest.raises(UserError, match="unknown backend 'gpu'.*ort-cpu"):
        open_session(path, backend="gpu")
    with pytest.raises(UserError, match="no variant 'int8'.*trtpipe optimize"):
        open_session(path, variant="int8")
    with pytest.raises(UserError, match="CUDAExecutionProvider.*trtpipe doctor"):
        open_session(path, backend="ort-cuda")
    with pytest.raises(UserError, match="threads"):
        open_session(path, threads=0)


def test_ort_spinning_is_onnx_runtimes_default_unless_the_environment_or_the_session_sets_it(
    make_bundle, monkeypatch
):
    path = make_bundle("tiny-bert", "embed")

    def entries(**kwargs):
        return spin_entries(open_session(path, **kwargs))

    monkeypatch.delenv("TRTPIPE_ORT_SPIN", raising=False)
    assert entries() == {}  # not set: ONNX Runtime's own default (spinning), no entry of ours
    for value, expected in (
        ("0", {"session.intra_op.allow_spinning": "0"}),
        ("off", {"session.intra_op.allow_spinning": "0"}),
        ("1", {"session.intra_op.allow_spinning": "1"}),
        ("stop", {"session.force_spinning_stop": "1"}),
    ):
        monkeypatch.setenv("TRTPIPE_ORT_SPIN", value)
        assert entries() == expected
    assert entries(spin="0") == {"session.intra_op.allow_spinning": "0"}  # the session's own setting wins
    monkeypatch.setenv("TRTPIPE_ORT_SPIN", "sometimes")
    with pytest.raises(UserError, match=r"TRTPIPE_ORT_SPIN='sometimes' is not a setting: use stop.*unset it"):
        open_session(path)
    with pytest.raises(UserError, match=r"spin='fast' is not a setting: use stop"):
        open_session(path, spin="fast")
    with pytest.raises(UserError, match="backend ov has none"):
        open_session(path, backend="ov", spin="stop")


def test_embed_pipeline_batches_equal_single_runs(make_bundle):
    pipe = load_pipeline(make_bundle("tiny-bert", "embed"))
    texts = ["short", "a somewhat longer sentence with more words in it", "mid length text here", "x " * 30]
    batched = pipe.embed(texts, batch_size=3)
    single = np.stack([pipe.embed([t])[0] for t in texts])
    assert_close(batched, single, atol=1e-5, what="bucketed batch vs single")
    assert_close(np.linalg.norm(batched, axis=1), np.ones(4), atol=1e-5, what="unit norm")


def test_classify_pipeline_labels_and_pairs(make_bundle):
    pipe = load_pipeline(make_bundle("tiny-albert", "classify"))
    results = pipe.classify(["one text", "another text"], top_k=2)
    for res in results:
        assert res["label"] in ("NEGATIVE", "POSITIVE")
        assert abs(sum(res["scores"].values()) - 1.0) < 1e-5
        assert list(res["scores"])[0] == res["label"]
    paired = pipe.classify(["premise here"], ["hypothesis here"])
    unpaired = pipe.classify(["premise here"])
    assert paired[0]["scores"] != unpaired[0]["scores"]
    with pytest.raises(UserError, match="2 texts but 1 text pairs"):
        pipe.classify(["a", "b"], ["c"])


def test_fill_mask_pipeline(make_bundle):
    pipe = load_pipeline(make_bundle("tiny-bert", "fill-mask"))
    fills = pipe.fill_mask(["The capital of France is [MASK]."], top_k=3)[0]
    assert len(fills) == 3
    assert fills[0]["score"] >= fills[1]["score"] >= fills[2]["score"]
    assert "[MASK]" not in fills[0]["sequence"]
    two = pipe.fill_mask(["[MASK] and [MASK]."], top_k=2)[0]
    assert len(two) == 2 and len(two[0]) == 2
    with pytest.raises(UserError, match="no \\[MASK\\] token"):
        pipe.fill_mask(["nothing to fill"])


def test_ner_pipeline_offsets_point_into_the_text(make_bundle):
    pipe = load_pipeline(make_bundle("tiny-bert", "ner"))
    text = "Ada Lovelace worked with Charles Babbage in London."
    entities = pipe.ner([text])[0]
    for ent in entities:
        assert text[ent["start"] : ent["end"]] == ent["word"]
        assert ent["entity"] in ("PER", "ORG", "LOC", "MISC")


def test_qa_long_context_runs_in_windows(make_bundle):
    pipe = load_pipeline(make_bundle("tiny-bert", "qa"))
    context = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(60))
    windows = pipe.encoder.encode_windows("Which topic?", context, stride=32)
    assert len(windows) > 1  # longer than the model's 128 positions
    answer = pipe.qa(question="Which topic?", context=context)
    assert context[answer["start"] : answer["end"]] == answer["answer"]
    assert 0 < answer["score"] <= 1


CALLS = {
    "embed": ("a sentence", ["a sentence", "another one"]),
    "classify": ("a sentence", ["a sentence", "another one"]),
    "ner": ("Ada Lovelace lives in London.", ["Ada Lovelace lives in London.", "Paris"]),
    "fill-mask": ("Paris is the [MASK] of France.", ["Paris is the [MASK] of France.", "A [MASK] sat."]),
}


@pytest.mark.parametrize("task", sorted(CALLS))
def test_calling_a_pipeline_with_one_text_gives_one_answer_and_with_a_list_a_list(make_bundle, task):
    """As transformers pipelines: pipe("text") → one answer, pipe([texts]) → a list, the same answers."""
    pipe = load_pipeline(make_bundle("tiny-bert", task))
    one, many = CALLS[task]
    single, listed = pipe(one), pipe(many)
    assert len(listed) == len(many)
    if task == "embed":
        assert single.shape == (32,) and listed.shape == (2, 32)
        assert_close(single, listed[0], atol=1e-6, what="one text vs the first of a list")
    else:
        assert single == listed[0] and single == pipe([one])[0]
        assert isinstance(
            single, dict if task == "classify" else list
        )  # a label, or one text's entities / fills
    if task == "classify":
        assert (
            pipe("a premise", text_pairs="a hypothesis")
            == pipe(["a premise"], text_pairs=["a hypothesis"])[0]
        )
    with pytest.raises(UserError, match="a text or a list of texts"):
        pipe()


def test_calling_a_qa_pipeline_as_transformers_does(make_bundle):
    pipe = load_pipeline(make_bundle("tiny-bert", "qa"))
    question, context = "Where did the cat sit?", "The cat sat on the mat in the house."
    answer = pipe(question=question, context=context)
    assert isinstance(answer, dict) and context[answer["start"] : answer["end"]] == answer["answer"]
    assert pipe(question, context=context) == answer == pipe({"question": question, "context": context})
    pairs = [{"question": question, "context": context}, {"question": "What sat?", "context": context}]
    listed = pipe(pairs)
    assert isinstance(listed, list) and len(listed) == 2 and listed[0] == answer
    assert pipe(question=[question, "What sat?"], context=context) == listed
    with pytest.raises(UserError, match='needs a "question" and a "context"'):
        pipe([{"question": question}])
    with pytest.raises(UserError, match="question answering needs a question and a context"):
        pipe()


class FakeEncoding:
    def __init__(self, word_ids, offsets, special, sequence_ids=None):
        self.word_ids = word_ids
        self.offsets = offsets
        self.special_tokens_mask = special
        self.sequence_ids = sequence_ids
        self.ids = list(range(len(word_ids)))


def test_entity_aggregation_groups_bio_words():
    text = "Ada Lovelace met Bob"
    labels = {0: "O", 1: "B-PER", 2: "I-PER"}
    # tokens: [CLS] Ada Love ##lace met Bob [SEP]
    enc = FakeEncoding(
        [None, 0, 1, 1, 2, 3, None],
        [(0, 0), (0, 3), (4, 8), (8, 12), (13, 16), (17, 20), (0, 0)],
        [1, 0, 0, 0, 0, 0, 1],
    )
    probs = np.zeros((7, 3))
    probs[:, 0] = 1
    probs[1] = [0.1, 0.8, 0.1]
    probs[2] = [0.1, 0.2, 0.7]
    probs[3] = [0.9, 0.05, 0.05]  # sub-token: ignored (word takes its first sub-token's label)
    probs[5] = [0.1, 0.9, 0.0]
    entities = _aggregate_entities(text, enc, probs, labels)
    assert [(e["entity"], e["word"]) for e in entities] == [("PER", "Ada Lovelace"), ("PER", "Bob")]
    assert entities[0]["score"] == pytest.approx(0.75)


def test_best_span_respects_context_and_order():
    enc = FakeEncoding(
        [None, 0, None, 0, 1, 2, None],
        [(0, 0), (0, 1), (0, 0), (0, 3), (4, 7), (8, 11), (0, 0)],
        [1, 0, 1, 0, 0, 0, 1],
        sequence_ids=[None, 0, None, 1, 1, 1, None],
    )
    start = np.array([0, 9, 0, 1, 5, 0, 0], dtype=np.float32)  # the question token (9) must be ignored
    end = np.array([0, 9, 0, 0, 1, 6, 0], dtype=np.float32)
    score, s, e = _best_span(enc, start, end, max_tokens=30)
    assert (s, e) == (4, 11)
    assert 0 < score <= 1


def test_length_buckets_group_similar_lengths():
    lengths = [5, 100, 6, 99, 7, 98, 8, 97]
    groups = length_buckets(lengths, batch_size=2)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert all(max(lengths[i] for i in g) - min(lengths[i] for i in g) <= 2 for g in groups)
    with pytest.raises(UserError):
        length_buckets(lengths, 0)


def test_length_buckets_bound_the_padding_each_batch_wastes():
    """A batch is cut where padding to its longest member would waste more than max_waste of its tokens, so mixed
    lengths never cost much more than their own tokens (the reason batching pays for encoders)."""
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(4, 128, 500)]
    for max_waste in (0.1, 0.2, 0.5):
        groups = length_buckets(lengths, batch_size=32, max_waste=max_waste)
        assert sorted(i for g in groups for i in g) == list(range(500))
        assert all(len(g) <= 32 for g in groups)
        for group in groups:
            padded = len(group) * max(lengths[i] for i in group)
            assert 1 - sum(lengths[i] for i in group) / padded <= max_waste + 1e-9
    plain = sum(len(g) * max(lengths[i] for i in g) for g in length_buckets(lengths, 32, max_waste=1.0))
    tight = sum(len(g) * max(lengths[i] for i in g) for g in length_buckets(lengths, 32, max_waste=0.1))
    assert tight < plain and tight <= 1.1 * sum(lengths)


def test_empty_and_bad_texts(make_bundle):
    pipe = load_pipeline(make_bundle("tiny-bert", "classify"))
    with pytest.raises(UserError, match="empty"):
        pipe.classify([""])
    with pytest.raises(UserError, match="no text given"):
        pipe.classify([])
    with pytest.raises(UserError, match="not a string"):
        pipe.classify([3])
    with pytest.raises(UserError, match="was exported for task 'classify', not 'embed'"):
        pipe.embed(["x"])


@pytest.mark.parametrize(
    "name, phrase",
    [
        ("embed", "an embed"),
        ("classify", "a classify"),
        ("fill-mask", "a fill-mask"),
        ("albert", "an albert"),
        ("gpt2", "a gpt2"),
        ("fp16", "an fp16"),
        ("int8-qdq", "an int8-qdq"),
        ("kv-inplace", "a kv-inplace"),
        ("fused", "a fused"),
        ("input", "an input"),
        ("TensorRT-RTX", "a TensorRT-RTX"),
        ("NER", "an NER"),
        ("user", "a user"),
        (8, "an 8"),
        (18, "an 18"),
        (86, "an 86"),
        (32, "a 32"),
        (128, "a 128"),
        (800, "an 800"),
    ],
)
def test_with_article_reads_names_as_they_are_said(name, phrase):
    from trtpipe.runtime.errors import with_article

    assert with_article(name) == phrase


def test_messages_built_from_a_task_name_take_its_article(make_bundle):
    from trtpipe.runtime import Generator, perplexity

    path = make_bundle("tiny-bert", "embed")
    with pytest.raises(UserError, match="is an embed bundle; generation needs a GPT-2 bundle"):
        Generator(path)
    with pytest.raises(UserError, match="is an embed bundle; perplexity needs a GPT-2 bundle"):
        perplexity(path, "some text to score")


def test_check_finite_names_the_bad_output():
    from trtpipe.runtime.tasks import check_finite

    check_finite({"logits": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match="output 'logits' has 1 NaN and 1 Inf"):
        check_finite({"logits": np.array([0, np.nan, np.inf], np.float32)})
