"""Many machines: `trtpipe deploy` turns a Triton repository into Kubernetes manifests and a KServe
InferenceService. Every manifest is validated offline — Deployment, Service and HorizontalPodAutoscaler against
Kubernetes' own JSON schemas (kubernetes-validate, strict: no unknown field passes), the InferenceService against
KServe's SDK types — and checked for what it promises: the Triton image that matches the engines' TensorRT,
probes, ports, drain time, GPUs, sized requests, the autoscaler's metric; bad options are one line, exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.runtime.store import write_manifest
from trtpipe.serving import RepoOptions, write_repository
from trtpipe.serving.deploy import DeployOptions, write_deployment
from trtpipe.serving.images import RELEASES, release_for_tensorrt
from trtpipe.serving.manifests import to_yaml

runner = CliRunner()
K8S = kubernetes_validate.latest_version()  # the newest Kubernetes release whose schemas the package bundles


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _add_engine(bundle_dir: Path, version: str | None) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    (bundle_dir / "engines").mkdir(exist_ok=True)
    (bundle_dir / "engines" / "fp32.trt10-h100-sm90.plan").write_bytes(b"not a real plan")
    entry = {"flavour": "trt10", "variant": "fp32", "gpu": "NVIDIA H100 80GB HBM3"}
    if version:
        entry["tensorrt_version"] = version
    manifest["engines"]["engines/fp32.trt10-h100-sm90.plan"] = entry
    write_manifest(bundle_dir, manifest)


@pytest.fixture(scope="module")
def repos(make_bundle, tmp_path_factory):
    """Repositories as `trtpipe triton` writes them: python (CPU and ort-cuda), onnxruntime, tensorrt engines."""
    root = tmp_path_factory.mktemp("deploy-repos")
    classify, embed = make_bundle("tiny-bert", "classify"), make_bundle("tiny-bert", "embed")
    gpt2 = make_bundle("tiny-gpt2", "generate")
    found = {}
    write_repository([str(classify), str(gpt2)], root / "python", RepoOptions(instances=2))
    write_repository([str(embed)], root / "python-gpu", RepoOptions(runtime="ort-cuda"))
    write_repository([str(classify), str(embed)], root / "ort", RepoOptions(backend="onnxruntime"))
    for label, version in (
        ("trt", "10.13.3.9"),
        ("trt-old", "10.8.0.43"),
        ("trt-11", "11.4.0.106"),
        ("trt-none", None),
    ):
        bundle = root / f"bundle-{label}"
        shutil.copytree(classify, bundle)
        _add_engine(bundle, version)
        write_repository([f"classify={bundle}"], root / label, RepoOptions(backend="tensorrt"))
    for name in ("python", "python-gpu", "ort", "trt", "trt-old", "trt-11", "trt-none"):
        found[name] = root / name
    return found


def manifests(out: Path) -> dict[str, dict]:
    """kind → object, for every YAML file `kubectl apply -f DIR` would read (the top level of DIR)."""
    found = {}
    for path in sorted(out.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


def k8s_valid(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S, strict=True)


# ------------------------------------------------------------------------- KServe: the SDK's types, strictly

KSERVE_CHECK = Path(__file__).with_name("kserve_types.py")


def kserve_valid(*docs: dict) -> None:
    """Each doc walked through KServe's SDK types in a fresh interpreter (tests/kserve_types.py): the kserve
    package registers Triton's gRPC protos under the same names tritonclient does, so the two cannot share a
    process. Raises AssertionError with the first problem."""
    result = subprocess.run(
        [sys.executable, str(KSERVE_CHECK)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result


# -------------------------------------------------------------------------------------- kubernetes target


@pytest.mark.parametrize(
    "repo, args",
    [
        (
            "python",
            ["--model-repository", "s3://models-bucket/prod/triton", "--credentials-secret", "s3-creds"],
        ),
        ("python-gpu", ["--model-repository", "as://acct/models/triton", "--credentials-secret", "az"]),
        ("ort", ["--pvc", "triton-models", "--pvc-path", "repos/v1", "--namespace", "serving"]),
        ("trt", ["--model-repository", "gs://bucket/repo", "--credentials-secret", "gcs", "--replicas", "2"]),
        (
            "trt",
            [
                "--pvc",
                "models",
                "--max-replicas",
                "1",
                "--node-selector",
                "nvidia.com/gpu.product=NVIDIA-H100",
            ],
        ),
    ],
    ids=["python-s3", "python-gpu-azure", "ort-pvc", "trt-gcs", "trt-no-hpa"],
)
def test_manifests_validate_against_kubernetes_schemas(repos, tmp_path, repo, args):
    out = tmp_path / "k8s"
    result = invoke("deploy", repos[repo], "--out", out, *args, "-q")
    assert result.exit_code == 0, result.output
    found = manifests(out)
    expected = {"Deployment", "Service"} | (
        {"HorizontalPodAutoscaler"} if "--max-replicas" not in args else set()
    )
    assert set(found) == expected
    for doc in found.values():
        k8s_valid(doc)
    assert K8S >= "1.30"


def test_the_deployment_serves_the_repository_as_promised(repos, tmp_path):
    out = tmp_path / "k8s"
    args = [
        "--pvc",
        "models",
        "--pvc-path",
        "r1",
        "--drain-timeout",
        45,
        "--replicas",
        2,
        "--max-replicas",
        6,
    ]
    assert invoke("deploy", repos["ort"], "--out", out, *args, "-q").exit_code == 0
    found = manifests(out)
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert (
        server["image"]
        == "nvcr.io/nvidia/tritonserver:26.08-py3"
        == f"nvcr.io/nvidia/tritonserver:{max(RELEASES)}-py3"
    )
    assert "--model-repository=/models/r1" in server["args"] and "--exit-timeout-secs=45" in server["args"]
    assert pod["terminationGracePeriodSeconds"] == 5 + 45 + 5  # preStop pause + drain + margin
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    ports = {p["name"]: p["port"] for p in found["Service"]["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert found["Service"]["spec"]["selector"] == found["Deployment"]["spec"]["selector"]["matchLabels"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert "nvidia.com/gpu" not in server["resources"]["limits"] and "tolerations" not in pod
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    assert not (out / "prometheus-adapter").exists() and not (out / "image").exists()
    assert "kubectl apply -f ." in (out / "README.md").read_text()


def test_requests_grow_with_the_weights_and_the_instances(repos, tmp_path):
    def requests(repo, *extra):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        assert invoke("deploy", repo, "--out", out, "--pvc", "m", *extra, "-q").exit_code == 0
        server = manifests(out)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        return server["resources"]

    def mib(q):
        return int(q.removesuffix("Mi"))

    one = requests(repos["ort"])  # two ONNX models, one instance each
    python = requests(repos["python"])  # two models, two instances each, a process per instance
    assert mib(python["requests"]["memory"]) > mib(one["requests"]["memory"])
    assert mib(one["limits"]["memory"]) == 2 * mib(one["requests"]["memory"])
    fixed = requests(repos["ort"], "--cpu", "3", "--memory", "6Gi")
    assert fixed["requests"] == {"cpu": "3", "memory": "6Gi"} and fixed["limits"]["memory"] == "6Gi"


def test_a_gpu_repository_gets_a_gpu_and_scales_on_the_queue(repos, tmp_path):
    out = tmp_path / "k8s"
    result = invoke(
        "deploy", repos["trt"], "--out", out, "--model-repository", "s3://b/r", "--target-queue-us", 5000
    )
    assert result.exit_code == 0, result.output
    found = manifests(out)
    pod = found["Deployment"]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"] == "nvcr.io/nvidia/tritonserver:25.10-py3"  # TensorRT 10.13.3 — the engine's
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (metric,) = found["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": "5000",
    }
    rules = yaml.safe_load((out / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"][0]
    assert rules["name"]["as"] == metric["pods"]["metric"]["name"]
    assert (
        "nv_inference_queue_duration_us" in rules["metricsQuery"]
        and "nv_inference_request_success" in rules["metricsQuery"]
    )
    annotations = found["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8002"
    record = json.loads((repos["trt"] / "trtpipe-repository.json").read_text())
    assert record["models"]["classify"]["tensorrt_version"] == "10.13.3.9"  # what deploy matched on
    gpu_python = tmp_path / "gpu-python"
    assert (
        invoke("deploy", repos["python-gpu"], "--out", gpu_python, "--pvc", "m", "--gpus", 2, "-q").exit_code
        == 0
    )
    limits = manifests(gpu_python)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert limits["nvidia.com/gpu"] == "2"
    assert '"/opt/trtpipe-src[gpu]"' in (gpu_python / "image" / "Dockerfile").read_text()


def test_the_container_is_the_release_with_the_engines_tensorrt(repos, tmp_path):
    assert release_for_tensorrt("10.13.3.9", "e") == "25.10"  # 25.09 has it too: the newest wins
    assert release_for_tensorrt("10.8.0.43", "e") == "25.02"
    assert release_for_tensorrt("10.3.0", "e") == "24.08"
    out = tmp_path / "old"
    assert invoke("deploy", repos["trt-old"], "--out", out, "--pvc", "m", "-q").exit_code == 0
    assert manifests(out)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        ":25.02-py3"
    )
    for repo, message in (("trt-11", "TensorRT 11.4.0.106"), ("trt-none", "does not record")):
        result = invoke("deploy", repos[repo], "--out", tmp_path / repo, "--pvc", "m")
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0] and "--image" in lines[0]
        assert not (tmp_path / repo).exists()
        custom = "registry.example.com/triton:26.01-trt11"
        result = invoke(
            "deploy", repos[repo], "--out", tmp_path / repo, "--pvc", "m", "--image", custom, "-q"
        )
        assert result.exit_code == 0, result.output
        assert (
            manifests(tmp_path / repo)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
            == custom
        )


def test_the_python_backend_gets_a_dockerfile_with_trtpipe(repos, tmp_path):
    out = tmp_path / "k8s"
    result = invoke("deploy", repos["python"], "--out", out, "--pvc", "m")
    assert result.exit_code == 0, result.output
    assert "--image REGISTRY/trtpipe-triton:0.1.0" in result.output  # the note: build, push, pass --image
    docker = (out / "image" / "Dockerfile").read_text()
    assert f"ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:{max(RELEASES)}-py3" in docker
    assert "FROM ${TRITON_IMAGE}" in docker and 'pip install "/opt/trtpipe-src[cpu]"' in docker
    source = out / "image" / "trtpipe-src"
    assert (source / "pyproject.toml").is_file() and (
        source / "trtpipe" / "serving" / "python_model.py"
    ).is_file()
    assert not list(source.rglob("__pycache__"))
    pod = manifests(out)["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "trtpipe-triton:0.1.0"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
    # runtime trt inside the Python backend: the image's pip TensorRT is pinned to the engines'
    trt_repo = tmp_path / "python-trt"
    write_repository([str(repos["trt"].parent / "bundle-trt")], trt_repo, RepoOptions(runtime="trt"))
    out = tmp_path / "k8s-trt"
    assert invoke("deploy", trt_repo, "--out", out, "--pvc", "m", "-q").exit_code == 0
    docker = (out / "image" / "Dockerfile").read_text()
    assert 'pip install "/opt/trtpipe-src[gpu]" "tensorrt==10.13.3.9"' in docker
    assert (
        manifests(out)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == "1"
    )


def test_object_store_credentials_come_from_the_secret_under_their_conventional_names(repos, tmp_path):
    env_of = {}
    for scheme, uri in (("s3", "s3://b/r"), ("gs", "gs://b/r"), ("as", "as://acct/cont/r")):
        out = tmp_path / scheme
        assert (
            invoke(
                "deploy",
                repos["ort"],
                "--out",
                out,
                "--model-repository",
                uri,
                "--credentials-secret",
                "c",
                "-q",
            ).exit_code
            == 0
        )
        pod = manifests(out)["Deployment"]["spec"]["template"]["spec"]
        env_of[scheme] = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert pod["containers"][0]["args"][0] == f"--model-repository={uri}"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env_of["s3"])
    assert env_of["s3"]["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "c",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert set(env_of["as"]) == {"AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY"}
    assert env_of["gs"]["GOOGLE_APPLICATION_CREDENTIALS"]["value"] == "/var/secrets/google/key.json"


# ------------------------------------------------------------------------------------------- KServe target


@pytest.mark.parametrize(
    "repo, args, check",
    [
        ("ort", ["--model-repository", "s3://b/r"], "cpu"),
        ("trt", ["--pvc", "models", "--pvc-path", "repo", "--namespace", "ml"], "gpu"),
        ("python", ["--model-repository", "as://acct/cont/r", "--service-account", "kserve-sa"], "python"),
    ],
    ids=["ort-s3", "trt-pvc", "python-azure"],
)
def test_kserve_inference_service_matches_kserves_types(repos, tmp_path, repo, args, check):
    out = tmp_path / "kserve"
    result = invoke("deploy", repos[repo], "--out", out, "--target", "kserve", *args, "-q")
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.glob("*.yaml")] == ["inferenceservice.yaml"]
    isvc = manifests(out)["InferenceService"]
    kserve_valid(isvc)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["runtime"] == "kserve-tritonserver"
    assert "--exit-timeout-secs=30" in model["args"] and predictor["terminationGracePeriodSeconds"] == 40
    if check == "cpu":
        assert model["storageUri"] == "s3://b/r" and model["runtimeVersion"] == f"{max(RELEASES)}-py3"
        assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 70)
    elif check == "gpu":
        assert model["storageUri"] == "pvc://models/repo" and model["runtimeVersion"] == "25.10-py3"
        assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
        (metric,) = predictor["autoScaling"]["metrics"]
        assert "nv_inference_queue_duration_us" in metric["podmetric"]["metric"]["query"]
    else:
        assert model["storageUri"] == "https://acct.blob.core.windows.net/cont/r"
        assert model["image"] == "trtpipe-triton:0.1.0" and predictor["serviceAccountName"] == "kserve-sa"
        assert (out / "image" / "Dockerfile").is_file()


def test_the_validators_catch_what_they_are_for(repos, tmp_path):
    out = tmp_path / "k"
    assert invoke("deploy", repos["ort"], "--out", out, "--pvc", "m", "-q").exit_code == 0
    deployment = manifests(out)["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_valid(deployment)
    isvc_out = tmp_path / "i"
    assert (
        invoke("deploy", repos["ort"], "--out", isvc_out, "--pvc", "m", "--target", "kserve", "-q").exit_code
        == 0
    )
    isvc = manifests(isvc_out)["InferenceService"]
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    with pytest.raises(AssertionError, match="storageURI"):
        kserve_valid(isvc)
    isvc = manifests(isvc_out)["InferenceService"]
    isvc["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = ["1"]
    with pytest.raises(AssertionError, match="limits"):
        kserve_valid(isvc)
    isvc = manifests(isvc_out)["InferenceService"]
    isvc["spec"]["predictor"]["minReplicas"] = "1"
    with pytest.raises(AssertionError, match="minReplicas"):
        kserve_valid(isvc)


def test_yaml_writer_round_trips_what_would_read_back_as_another_type():
    data = {
        "a": ["true", "on", "1.10", "0755", "null", "", "a: b", "- x", "#c", "ünïcode", 'q"uote'],
        "nested": [[1, 2], {"k": {}}, [], {"l": []}],
        "n": [0, -1, 2.5, True, False, None],
        "odd key: yes": {"on": "x"},
        "empty": {},
    }
    assert yaml.safe_load(to_yaml(data)) == data


# ---------------------------------------------------------------------------------------------- bad input


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("no-source", [], "--pvc CLAIM"),
        ("two-sources", ["--pvc", "m", "--model-repository", "s3://b/r"], "--pvc CLAIM"),
        ("bad-scheme", ["--model-repository", "https://example.com/r"], "s3://BUCKET/PATH"),
        ("no-bucket", ["--model-repository", "s3://"], "names no bucket"),
        ("azure-no-container", ["--model-repository", "as://acct"], "as://ACCOUNT/CONTAINER/PATH"),
        ("replicas-0", ["--pvc", "m", "--replicas", "0"], "--replicas"),
        ("max-below-min", ["--pvc", "m", "--replicas", "3", "--max-replicas", "2"], "--max-replicas"),
        ("drain-0", ["--pvc", "m", "--drain-timeout", "0"], "--drain-timeout"),
        ("drain-huge", ["--pvc", "m", "--drain-timeout", "7200"], "--drain-timeout"),
        ("unknown-target", ["--pvc", "m", "--target", "nomad"], "--target"),
        ("bad-name", ["--pvc", "m", "--name", "My_Model"], "DNS label"),
        ("bad-cpu", ["--pvc", "m", "--cpu", "lots"], "quantity"),
        ("secret-with-pvc", ["--pvc", "m", "--credentials-secret", "c"], "object stores"),
        (
            "kserve-secret",
            ["--model-repository", "s3://b/r", "--credentials-secret", "c", "--target", "kserve"],
            "--service-account",
        ),
        ("bad-pvc-path", ["--pvc", "m", "--pvc-path", "../up"], "--pvc-path"),
        ("gpu-without-gpus", ["--pvc", "m", "--gpus", "0"], "--gpus 0"),
        ("exists", ["--pvc", "m"], "--overwrite"),
        ("not-a-repository", ["--pvc", "m"], "trtpipe triton"),
        ("out-in-repo", ["--pvc", "m"], "overlaps the repository"),
        ("unknown-backend", ["--pvc", "m"], "backend 'openvino'"),
        ("bad-node-selector", ["--pvc", "m", "--node-selector", "novalue"], "KEY=VALUE"),
    ],
)
def test_bad_options_are_one_line_exit_2_and_write_nothing(case, args, message, repos, tmp_path):
    repo = repos["trt" if case == "gpu-without-gpus" else "ort"]
    out = tmp_path / "out" / "k8s"
    out.parent.mkdir()
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "not-a-repository":
        repo = tmp_path / "nothing"
        repo.mkdir()
    elif case == "out-in-repo":
        out = repo / "k8s"
    elif case == "unknown-backend":
        repo = tmp_path / "newer"
        shutil.copytree(repos["ort"], repo)
        record = json.loads((repo / "trtpipe-repository.json").read_text())
        record["options"]["backend"] = "openvino"
        (repo / "trtpipe-repository.json").write_text(json.dumps(record))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")} if out.exists() else None
    result = invoke("deploy", repo, "--out", out, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0] and "Traceback" not in result.output
    if before is None:
        assert not out.exists()
    else:
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert _leftovers(out.parent) == []


def test_overwrite_replaces_and_a_failure_while_writing_leaves_the_old_manifests(
    repos, tmp_path, monkeypatch
):
    from trtpipe.serving import deploy

    out = tmp_path / "k8s"
    out.mkdir()  # existing but empty: no --overwrite needed
    write_deployment(repos["ort"], out, DeployOptions(pvc="m"))
    before = {p.name: p.read_text() for p in out.iterdir()}
    calls = []
    real = deploy.render

    def failing(plan):
        calls.append(plan)
        files = real(plan)
        files["zz/broken.yaml"] = None  # write_text(None) fails after the others are staged
        return files

    monkeypatch.setattr(deploy, "render", failing)
    with pytest.raises(TypeError):
        write_deployment(repos["ort"], out, DeployOptions(pvc="other"), overwrite=True)
    assert calls and {p.name: p.read_text() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(deploy, "render", real)
    write_deployment(repos["ort"], out, DeployOptions(pvc="other", target="kserve"), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "inferenceservice.yaml"]
    assert "pvc://other" in (out / "inferenceservice.yaml").read_text()
