"""Shared fixtures: tiny seeded bundles built once per session (milliseconds to seconds each)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

ENCODER_TASKS = ("embed", "classify", "ner", "qa", "fill-mask")


def has_gpu() -> bool:
    try:
        import subprocess

        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def pytest_collection_modifyitems(config, items):
    gpu = has_gpu()
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def bundles_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundles")


class BundleFactory:
    """Exports (preset, task) once per session and hands out the path."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[tuple, Path] = {}

    def __call__(self, preset: str, task: str, **kwargs) -> Path:
        key = (preset, task, tuple(sorted(kwargs.items())))
        if key not in self.cache:
            from trtpipe.export import export_bundle

            suffix = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
            path = self.root / f"{preset}-{task}{('-' + suffix) if suffix else ''}"
            export_bundle(preset, task, path, **kwargs)
            self.cache[key] = path
        return self.cache[key]


@pytest.fixture(scope="session")
def make_bundle(bundles_dir) -> BundleFactory:
    return BundleFactory(bundles_dir)


def tiny_gpt2_variant(root: Path, **config) -> Path:
    """A bundle of tiny-gpt2 with `config` changed (a seeded checkpoint made here, exported into `root`)."""
    import torch
    import transformers

    from trtpipe.export import export_bundle
    from trtpipe.export.vocab import gpt2_tokenizer_dir
    from trtpipe.presets import PRESETS

    config = {**PRESETS["tiny-gpt2"].config, **config}
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).save_pretrained(root / "checkpoint")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_tokenizer_dir(config["vocab_size"]))
    tokenizer.save_pretrained(root / "checkpoint")
    return export_bundle(str(root / "checkpoint"), "generate", root / "bundle")


@pytest.fixture(scope="session")
def long_gpt2(tmp_path_factory):
    """tiny-gpt2 with 2,048 positions: a stream of 2,000 tokens lasts seconds on Triton, far longer than a scheduling
    hiccup of the test process, so cancel, kill and drain tests are not racing its end."""
    return tiny_gpt2_variant(tmp_path_factory.mktemp("long-gpt2"), n_positions=2048)


@pytest.fixture
def copy_bundle(tmp_path):
    """A private copy of a session bundle, for tests that damage or modify it."""
    import shutil

    def copy(path: Path) -> Path:
        target = tmp_path / path.name
        shutil.copytree(path, target)
        return target

    return copy


def assert_close(
    actual: np.ndarray, expected: np.ndarray, atol: float = 1e-4, rtol: float = 1e-4, what: str = ""
) -> None:
    """assert_allclose that reports max/mean diff and the first bad index."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual - expected)
    bad = diff > atol + rtol * np.abs(expected)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.size} elements differ; max abs {diff.max():.3g}, mean {diff.mean():.3g}; "
            f"first at {tuple(int(i) for i in first)}: {actual[first]!r} vs {expected[first]!r}"
        )


SPIN_KEYS = ("session.intra_op.allow_spinning", "session.force_spinning_stop")


def spin_entries(session) -> dict[str, str]:
    """The spinning entries an OrtSession was opened with (`ort.spinning`); a key not set is left out (ONNX Runtime's
    default)."""
    options = session.session.get_session_options()
    found = {}
    for key in SPIN_KEYS:
        try:
            found[key] = options.get_session_config_entry(key)
        except RuntimeError:  # not set
            continue
    return found
