"""trtpipe.runtime.trt without a GPU: the pure parts (profile checks, buffer sizing, the manifest guard, backend
selection errors) and the whole TrtSession / TrtDecoder flow against a fake TensorRT + fake CUDA that keep "device"
memory on the host and execute with ONNX Runtime. The fakes check every copy and every write against the bytes
allocated, so buffer sizing, profile switching, KV ping-pong and CUDA-graph replay are exercised for real; only the
calls into libnvinfer and libcudart themselves are not. GPU tests (markers gpu, trt) run them on a real engine."""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.engines import builder as builder_mod
from trtpipe.engines import plan as plan_mod
from trtpipe.engines.memory import GIB
from trtpipe.engines.plan import BuildOptions, plan_build
from trtpipe.engines.progress import BuildProgress
from trtpipe.runtime.bundle import Bundle
from trtpipe.runtime.errors import UserError
from trtpipe.runtime.generate import Generator
from trtpipe.runtime.ort import OrtSession
from trtpipe.runtime.paths import sha256_file
from trtpipe.runtime.store import bundle_transaction
from trtpipe.runtime.trt import compat as trt_mod
from trtpipe.runtime.trt.compat import Environment, check_engine, choose_engine, rebuild_command
from trtpipe.runtime.trt.decoder import TrtDecoder
from trtpipe.runtime.trt.platform import Gpu
from trtpipe.runtime.trt.profiles import DECODE, PREFILL, io_capacities, select_profile, shape_problem
from trtpipe.runtime.trt.session import TrtSession

runner = CliRunner()
RTX4090 = Gpu(0, "NVIDIA GeForce RTX 4090", "8.9", 24 * GIB, "560.35")
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80 * GIB, "560.35")


# ------------------------------------------------------------------------------------------------ the fakes


class FakeCuda:
    """Device memory = host numpy buffers; every copy is bounds-checked against its allocation."""

    def __init__(self):
        self.allocations: dict[int, np.ndarray] = {}
        self.capturing: list | None = None
        self.launches = 0
        self.captures = 0

    def malloc(self, nbytes):
        buffer = np.zeros(max(int(nbytes), 1), dtype=np.uint8)
        self.allocations[buffer.ctypes.data] = buffer
        return buffer.ctypes.data

    def free(self, ptr):
        del self.allocations[ptr]

    def check(self, ptr, nbytes):
        for start, buffer in self.allocations.items():
            if start <= ptr < start + buffer.nbytes:
                assert ptr + nbytes <= start + buffer.nbytes, (
                    f"device overflow: {nbytes} bytes at +{ptr - start}"
                )
                return
        raise AssertionError(f"pointer {ptr:#x} is not device memory")

    def stream(self):
        return object()

    def stream_handle(self, stream):
        return 1

    def destroy_stream(self, stream):
        pass

    def sync(self, stream):
        pass

    def htod(self, ptr, array, stream):
        assert self.capturing is None, "no copies inside a captured graph"
        self.check(ptr, array.nbytes)
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def dtoh(self, array, ptr, stream):
        self.check(ptr, array.nbytes)
        ctypes.memmove(array.ctypes.data, ptr, array.nbytes)

    def memset(self, ptr, nbytes, stream):
        self.check(ptr, nbytes)
        ctypes.memset(ptr, 0, nbytes)

    def begin_capture(self, stream):
        self.capturing = []

    def end_capture(self, stream):
        recorded, self.capturing = self.capturing, None
        self.captures += 1
        return recorded

    def launch(self, executable, stream):
        self.launches += 1
        for replay in executable:
            replay()

    def destroy_graph(self, executable):
        pass

    def view(self, ptr, shape, dtype):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.check(ptr, nbytes)
        return np.frombuffer(
            (ctypes.c_char * max(nbytes, 1)).from_address(ptr), dtype=dtype, count=int(np.prod(shape))
        )


class FakeTrt:
    """The slice of the tensorrt module that TrtSession uses; the engine runs the ONNX variant with ORT."""

    __name__ = "fake_tensorrt"
    __version__ = "1.7.1.116"

    class ILogger:
        def __init__(self):
            pass

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    @staticmethod
    def nptype(dtype):
        return dtype

    def __init__(self, onnx_path: Path, profiles: list[dict], cuda: FakeCuda):
        self.onnx_path, self.profiles, self.cuda = onnx_path, profiles, cuda
        fake = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                return FakeEngine(fake)

        self.Runtime = Runtime


_ORT = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(float16)": np.float16}


class FakeEngine:
    def __init__(self, fake: FakeTrt):
        import onnxruntime

        self.fake = fake
        self.session = onnxruntime.InferenceSession(str(fake.onnx_path), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: np.dtype(_ORT[i.type]) for i in self.session.get_inputs()}
        self.outputs = {o.name: np.dtype(_ORT[o.type]) for o in self.session.get_outputs()}
        self.names = list(self.inputs) + list(self.outputs)
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = len(fake.profiles)
        self.executions = 0

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if name in self.inputs else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.inputs.get(name, self.outputs.get(name))

    def create_execution_context(self, config=None):
        return FakeContext(self)


class FakeContext:
    """Named-tensor API: refuses shapes outside the active profile, as TensorRT does."""

    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.out_shapes: dict[tuple, dict] = {}

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        bounds = self.engine.fake.profiles[self.profile]["shapes"][name]
        if not all(lo <= s <= hi for s, lo, hi in zip(shape, bounds["min"], bounds["max"])):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _feeds(self, zeros=False):
        feeds = {}
        for name, dtype in self.engine.inputs.items():
            shape = self.shapes[name]
            if zeros:
                feeds[name] = np.zeros(shape, dtype=dtype)
            else:
                feeds[name] = (
                    self.engine.fake.cuda.view(self.addresses[name], shape, dtype).reshape(shape).copy()
                )
        return feeds

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes[name]
        key = tuple(self.shapes[n] for n in self.engine.inputs)
        if key not in self.out_shapes:
            outputs = self.engine.session.run(None, self._feeds(zeros=True))
            self.out_shapes[key] = {n: o.shape for n, o in zip(self.engine.outputs, outputs)}
        return self.out_shapes[key][name]

    def _run(self, shapes, addresses):
        self.shapes, self.addresses = dict(shapes), dict(addresses)
        feeds = self._feeds()
        outputs = self.engine.session.run(None, feeds)
        cuda = self.engine.fake.cuda
        for name, value in zip(self.engine.outputs, outputs):
            value = np.ascontiguousarray(value)
            cuda.check(self.addresses[name], value.nbytes)
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        self.out_shapes[tuple(self.shapes[n] for n in self.engine.inputs)] = {
            n: o.shape for n, o in zip(self.engine.outputs, outputs)
        }
        self.engine.executions += 1

    def execute_async_v3(self, stream):
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        cuda = self.engine.fake.cuda
        if cuda.capturing is not None:
            cuda.capturing.append(lambda: self._run(shapes, addresses))
        else:
            self._run(shapes, addresses)
        return True


# ---------------------------------------------------------------------------------------------- fixtures


def add_engine_entry(path: Path, flavour: str = "rtx", **options) -> tuple[str, dict]:
    """A manifest entry and a stand-in plan file, as `trtpipe build` would write them (no TensorRT needed)."""
    plan = plan_build(path, BuildOptions(flavour=flavour, **options), need_library=False)
    state = BuildProgress(bar=None)
    entry = builder_mod._entry(plan, 0.0, state)
    entry["tensorrt_version"] = "1.7.1.116" if flavour == "rtx" else "10.13.0.35"
    with bundle_transaction(path) as (bundle, stage):
        tmp = stage(bundle.path / plan.file)
        tmp.write_bytes(b"not a real plan")
        entry["sha256"], entry["bytes"] = sha256_file(tmp), tmp.stat().st_size
        bundle.manifest.setdefault("engines", {})[plan.file] = entry
    return plan.file, entry


@pytest.fixture(scope="module")
def encoder(make_bundle, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trt-encoder") / "tiny-bert-classify"
    shutil.copytree(make_bundle("tiny-bert", "classify"), path)
    add_engine_entry(path, max_shapes="input_ids:4x64")
    return path


@pytest.fixture(scope="module")
def decoder(make_bundle, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trt-decoder") / "tiny-gpt2-generate"
    shutil.copytree(make_bundle("tiny-gpt2", "generate"), path)
    add_engine_entry(path, max_shapes="input_ids:3x48,attention_mask:3x96")
    return path


def fake_session(path: Path, cuda_graph: bool = False) -> tuple[TrtSession, FakeCuda]:
    bundle = Bundle.load(path)
    [(file, entry)] = list(bundle.engines.items())
    cuda = FakeCuda()
    fake = FakeTrt(bundle.model_path("fp32"), entry["profiles"], cuda)
    return TrtSession(bundle, file, entry, trt=fake, cuda=cuda, cuda_graph=cuda_graph), cuda


def encoder_feeds(path: Path, texts: list[str]) -> dict:
    from trtpipe.runtime.text import TextEncoder

    encoder = TextEncoder(Bundle.load(path))
    return encoder.collate(encoder.encode(texts)).feeds


# ------------------------------------------------------------------------------------------- pure helpers


PROFILE = {
    "name": "default",
    "shapes": {
        "input_ids": {"min": [1, 1], "opt": [4, 32], "max": [8, 64]},
        "attention_mask": {"min": [1, 1], "opt": [4, 32], "max": [8, 64]},
    },
}


def test_shape_checks_name_the_profile_bounds():
    assert shape_problem(PROFILE, {"input_ids": (2, 10), "attention_mask": (2, 10)}) is None
    problem = shape_problem(PROFILE, {"input_ids": (9, 10)})
    assert "9x10" in problem and "min 1x1, max 8x64" in problem and "axis 0 is 9" in problem
    with pytest.raises(UserError) as caught:
        select_profile([PROFILE], {"input_ids": (2, 65), "attention_mask": (2, 65)}, "bundles/x")
    message = str(caught.value)
    assert "outside the engine's default profile (min 1x1, max 8x64" in message
    assert "trtpipe build bundles/x --max-shapes" in message


def test_decoder_profile_is_chosen_by_phase():
    prefill = {
        "name": "prefill",
        "shapes": {"past_key_values.0.key": {"min": [1, 2, 0, 4], "opt": [1, 2, 0, 4], "max": [4, 2, 0, 4]}},
    }
    decode = {
        "name": "decode",
        "shapes": {"past_key_values.0.key": {"min": [1, 2, 1, 4], "opt": [1, 2, 8, 4], "max": [4, 2, 63, 4]}},
    }
    profiles = [prefill, decode]
    assert select_profile(profiles, {"past_key_values.0.key": (2, 2, 0, 4)}) == PREFILL
    assert select_profile(profiles, {"past_key_values.0.key": (2, 2, 10, 4)}) == DECODE
    with pytest.raises(UserError, match="decode profile"):
        select_profile(profiles, {"past_key_values.0.key": (2, 2, 64, 4)})


def test_buffers_are_sized_from_the_largest_profile():
    prefill = {"name": "prefill", "shapes": {"ids": {"min": [1, 1], "opt": [1, 8], "max": [4, 32]}}}
    decode = {"name": "decode", "shapes": {"ids": {"min": [1, 1], "opt": [1, 1], "max": [6, 1]}}}

    def outputs(
        profile, maxima
    ):  # logits [B, 1, V=10]; present [B, 2, T, 3] with T = 32 (prefill) or 40 (decode)
        batch = maxima["ids"][0]
        return {"logits": (batch, 1, 10), "present": (batch, 2, 32 if profile == 0 else 40, 3)}

    sizes = io_capacities([prefill, decode], {"ids": 8}, {"logits": 4, "present": 2}, outputs)
    assert sizes["ids"] == 4 * 32 * 8  # prefill's 4x32 beats decode's 6x1
    assert sizes["logits"] == 6 * 1 * 10 * 4
    assert sizes["present"] == max(4 * 2 * 32 * 3, 6 * 2 * 40 * 3) * 2
    empty = io_capacities(
        [{"name": "p", "shapes": {"past": {"min": [1, 0], "opt": [1, 0], "max": [1, 0]}}}],
        {"past": 4},
        {},
        lambda p, m: {},
    )
    assert empty["past"] == 4  # an empty past still gets a valid address


# ------------------------------------------------------------------------------------------ manifest guard


def test_guard_refuses_stale_engines_with_the_rebuild_command(decoder):
    bundle = Bundle.load(decoder)
    [(file, entry)] = list(bundle.engines.items())
    check_engine(bundle, file, entry, Environment("rtx", "1.7.1.116", RTX4090))  # fine
    check_engine(
        bundle, file, entry, Environment("rtx", "1.7.1.200", Gpu(0, "RTX 5090", "12.0", 32 * GIB, "575"))
    )
    cases = [
        (Environment("rtx", "1.7.1.116", H100), "not on NVIDIA H100", "--flavour trt10"),
        (
            Environment("rtx", "1.9.0", RTX4090),
            "built with TensorRT-RTX 1.7.1.116 but this is TensorRT-RTX 1.9.0",
            "--flavour rtx",
        ),
        (
            Environment("trt10", "10.13.0", H100),
            "is a TensorRT-RTX plan but this machine runs TensorRT 10",
            "--flavour trt10",
        ),
        (Environment("rtx", "1.7.1.116", None), "needs an NVIDIA GPU", "trtpipe doctor"),
    ]
    for env, message, fix in cases:
        with pytest.raises(UserError) as caught:
            check_engine(bundle, file, entry, env)
        text = str(caught.value)
        assert message in text and fix in text, text
        assert "\n" not in text
        if "doctor" not in fix:
            assert f"trtpipe build {decoder}" in text and "--overwrite" in text
            assert (
                "--max-shapes input_ids:3x48,attention_mask:3x96" in text
            )  # the original profile comes back
    changed = dict(entry, onnx_sha256="0" * 64)
    with pytest.raises(UserError, match=r"built from a different model\.onnx.*trtpipe build .* --overwrite"):
        check_engine(bundle, file, changed, Environment("rtx", "1.7.1.116", RTX4090))


def test_guard_for_tensorrt_10_plans(encoder, monkeypatch):
    bundle = Bundle.load(encoder)
    monkeypatch.setattr(plan_mod, "nvidia_gpus", lambda: (H100,))
    plan = plan_build(bundle, BuildOptions(flavour="trt10"), need_library=False)
    entry = builder_mod._entry(plan, 0.0, BuildProgress(None))
    entry["tensorrt_version"] = "10.13.0.35"
    assert plan.file == "engines/fp32.trt10-nvidia-h100-80gb-hbm3-sm90.plan"
    check_engine(bundle, plan.file, entry, Environment("trt10", "10.13.0.35", H100))
    a100 = Gpu(0, "NVIDIA A100-SXM4-80GB", "8.0", 80 * GIB, "560")
    with pytest.raises(
        UserError, match=r"compute capability 9\.0\) but this GPU is NVIDIA A100.*rebuild it here"
    ):
        check_engine(bundle, plan.file, entry, Environment("trt10", "10.13.0.35", a100))
    with pytest.raises(UserError, match="built with TensorRT 10.13.0.35 but this is TensorRT 10.14.1"):
        check_engine(bundle, plan.file, entry, Environment("trt10", "10.14.1", H100))
    portable = dict(
        entry, flags={**entry["flags"], "hardware_compatibility": "ampere+", "version_compatible": True}
    )
    check_engine(bundle, plan.file, portable, Environment("trt10", "10.14.1", a100))  # both relaxations hold
    with pytest.raises(UserError, match="TensorRT 10.13.0.35 but this is TensorRT 10.12"):
        check_engine(bundle, plan.file, portable, Environment("trt10", "10.12.0", a100))  # older runtime: no


def test_rebuild_command_switches_flavour_options():
    entry = {
        "flavour": "rtx",
        "build_args": ["--variant", "fp16", "--flavour", "rtx", "--compute-capabilities", "8.9"],
    }
    assert (
        rebuild_command("b", entry)
        == "trtpipe build b --variant fp16 --flavour rtx --compute-capabilities 8.9 --overwrite"
    )
    assert (
        rebuild_command("b", entry, "trt10") == "trtpipe build b --variant fp16 --flavour trt10 --overwrite"
    )


# --------------------------------------------------------------------------------------- backend selection


def test_backend_trt_errors_name_the_missing_piece(encoder, monkeypatch):
    from trtpipe.runtime import open_session

    monkeypatch.setattr(trt_mod, "nvidia_gpus", lambda: ())
    with pytest.raises(UserError, match=r"needs an NVIDIA GPU.*trtpipe doctor"):
        open_session(encoder, backend="trt")
    result = runner.invoke(app, ["run", str(encoder), "hello there", "--backend", "trt"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "error: backend trt needs an NVIDIA GPU, and none was found (nvidia-smi); see `trtpipe doctor`"
    ]
    result = runner.invoke(app, ["parity", str(encoder), "--backend", "trt"])
    assert result.exit_code == 2 and "needs an NVIDIA GPU" in result.output
    monkeypatch.setattr(trt_mod, "nvidia_gpus", lambda: (RTX4090,))
    monkeypatch.setattr(trt_mod, "module_available", lambda name: False)
    with pytest.raises(UserError, match=r"needs TensorRT.*trtpipe doctor"):
        open_session(encoder, backend="trt")
    with pytest.raises(UserError, match=r"trtpipe optimize .* --precision fp16"):
        open_session(encoder, backend="trt", variant="fp16")


def test_choose_engine_picks_a_matching_plan(encoder, decoder, monkeypatch, tmp_path):
    monkeypatch.setattr(trt_mod, "nvidia_gpus", lambda: (RTX4090,))
    monkeypatch.setattr(trt_mod, "module_available", lambda name: name == "tensorrt_rtx")
    monkeypatch.setattr(trt_mod, "installed_version", lambda flavour: "1.7.1.116")
    file, entry = choose_engine(Bundle.load(decoder), "fp32")
    assert entry["flavour"] == "rtx" and file.endswith(".plan")
    monkeypatch.setattr(trt_mod, "nvidia_gpus", lambda: (H100,))
    with pytest.raises(UserError, match="not on NVIDIA H100"):
        choose_engine(Bundle.load(decoder), "fp32")
    bare = tmp_path / "bare"
    shutil.copytree(decoder, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["engines"] = {}
    (bare / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        UserError,
        match=r"no TensorRT engine for variant fp32; build one with `trtpipe build .* --variant fp32`",
    ):
        choose_engine(Bundle.load(bare), "fp32")


# ------------------------------------------------------------------------------------- session with fakes


def test_session_matches_onnx_runtime_and_checks_shapes(encoder):
    session, cuda = fake_session(encoder)
    reference = OrtSession.from_bundle(Bundle.load(encoder))
    feeds = encoder_feeds(encoder, ["A short sentence.", "Another, somewhat longer sentence about the mat."])
    got = session.run(feeds)
    want = reference.run(feeds)
    assert list(got) == ["logits"]
    np.testing.assert_array_equal(got["logits"], want["logits"])
    # buffers: inputs sized from the profile max (4x64 int64), outputs from the engine's shape at that max
    assert session.tensors["input_ids"].capacity == 4 * 64 * 8
    assert session.tensors["logits"].capacity == 4 * 2 * 4
    # run_into copies straight into caller-owned host buffers
    out = {"logits": np.empty_like(want["logits"])}
    session.run_into(feeds, out)
    np.testing.assert_array_equal(out["logits"], want["logits"])
    # beyond the profile: refused before anything runs, with the bounds
    executions = session.engine.executions
    wide = encoder_feeds(encoder, ["word " * 70])
    with pytest.raises(UserError, match=r"outside the engine's default profile \(min 1x1, max 4x64"):
        session.run(wide)
    many = encoder_feeds(encoder, ["x y"] * 5)
    with pytest.raises(UserError, match="axis 0 is 5"):
        session.run(many)
    assert session.engine.executions == executions
    with pytest.raises(UserError, match="unknown input"):
        session.run({**feeds, "bogus": feeds["input_ids"]})
    session.close()
    assert not cuda.allocations  # every device buffer freed
    with pytest.raises(UserError, match="closed"):
        session.execute(feeds)


def test_session_refuses_a_corrupt_plan(encoder, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(encoder, path)
    bundle = Bundle.load(path)
    [(file, _)] = list(bundle.engines.items())
    (path / file).write_bytes(b"tampered")
    with pytest.raises(UserError, match=r"does not match its sha256.*trtpipe build .* --overwrite"):
        fake_session(path)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_decoder_generates_like_onnx_runtime(decoder, cuda_graph):
    session, cuda = fake_session(decoder, cuda_graph=cuda_graph)
    runner_ = TrtDecoder(session, cuda_graph=cuda_graph)
    runner_.cuda_graph = cuda_graph  # the fake flavour is rtx; exercise the TensorRT 10 capture path too
    reference = Generator(decoder, backend="ort-cpu", kv="pingpong")
    engine = Generator(decoder, backend="ort-cpu", kv="pingpong")
    engine.runner = runner_
    prompts = ["The list", "Python is a programming language that lets you", "A"]
    for _ in range(2):  # a second request reuses the device KV pool (and replays captured graphs)
        want = reference.generate(prompts, max_new_tokens=12)
        got = engine.generate(prompts, max_new_tokens=12)
        assert [c.ids for c in got] == [c.ids for c in want]
    assert got[0].stats["kv"] == "pingpong" and got[0].stats["kv_bytes"] > 0
    if cuda_graph:
        assert cuda.captures > 0 and cuda.launches >= cuda.captures  # the second request replays


def test_decoder_limits_come_from_the_profiles(decoder):
    session, _ = fake_session(decoder)
    runner_ = TrtDecoder(session)
    assert (runner_.max_batch, runner_.max_prompt, runner_.max_total) == (3, 48, 96)
    with pytest.raises(UserError, match="exceeds the engine's maximum batch 3"):
        runner_.new_cache(4, 20)
    with pytest.raises(UserError, match="exceeds the engine's 96 positions"):
        runner_.new_cache(1, 97)
    cache = runner_.new_cache(1, 90)
    with pytest.raises(UserError, match="exceeds the engine's prefill maximum 48"):
        runner_.prefill([[5] * 49], cache, 0)
    runner_.close()
