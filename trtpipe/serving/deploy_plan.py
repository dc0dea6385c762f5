"""What `trtpipe deploy` reads from a Triton repository and decides before writing anything: the models, their
instance kinds and weights, whether a pod needs a GPU, the container image, where the pod reads the repository
from, and the pod's CPU / memory requests; every bad option is a UserError here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.session import BACKENDS
from .images import default_release, release_for_tensorrt, triton_image
from .repository import MANIFEST, TRITON_BACKENDS, VERSION

TARGETS = ("kubernetes", "kserve")
SCHEMES = ("s3", "gs", "as")  # what tritonserver reads itself: AWS S3 (or S3-compatible), Google Cloud, Azure
# The conventional variables each object store's SDK reads, taken from the credentials Secret (key = variable).
CREDENTIAL_ENV = {
    "s3": (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True)),
    "as": (("AZURE_STORAGE_ACCOUNT", False), ("AZURE_STORAGE_KEY", False)),
    # gs: GOOGLE_APPLICATION_CREDENTIALS names a file: the Secret's key.json, mounted
}
GCS_KEY_DIR, GCS_KEY_FILE = "/var/secrets/google", "key.json"
PYTHON_IMAGE = f"trtpipe-triton:{__version__}"  # the Python-backend image's default name (built from image/)
PYTHON_EXTRAS = {"ort-cpu": "cpu", "ov": "cpu,ov", "ort-cuda": "gpu", "ort-trt": "gpu", "trt": "gpu"}
MOUNT = "/models"  # where a PersistentVolumeClaim holding the repository is mounted
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1035: Service and Deployment names
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # Secret, PVC, ServiceAccount names
_QUANTITY = re.compile(r"\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?")
MIB = 2**20


@dataclass(frozen=True)
class DeployOptions:
    """How `trtpipe deploy` serves a repository (the CLI's options)."""

    target: str = "kubernetes"  # kubernetes (Deployment, Service, HPA) | kserve (InferenceService)
    name: str | None = None  # default: from the repository's directory name
    namespace: str | None = None
    image: str | None = None  # default: the tritonserver release matching the engines, or PYTHON_IMAGE
    pvc: str | None = None  # the repository lives on this PersistentVolumeClaim …
    pvc_path: str = ""  # … in this directory of it
    model_repository: str | None = None  # … or at this object-store URI (s3://, gs://, as://)
    credentials_secret: str | None = None  # Secret with the object store's conventional variables
    service_account: str | None = None
    replicas: int = 1
    max_replicas: int | None = None  # default: max(replicas, 4); equal to replicas: no autoscaler
    gpus: int | None = None  # per pod; default 1 when the repository needs a GPU, else 0
    drain_timeout: int = 30  # seconds in-flight requests get on shutdown (tritonserver --exit-timeout-secs)
    cpu: str | None = None  # overrides the sized request, e.g. "4" or "2500m"
    memory: str | None = None  # overrides the sized request, e.g. "8Gi"
    target_cpu_utilization: int = 70  # HPA target for CPU repositories (% of the CPU request)
    target_queue_us: int = 20_000  # HPA target for GPU repositories (average queue time per request, µs)
    node_selector: tuple[tuple[str, str], ...] = ()
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"  # kserve + GPU: KEDA's Prometheus


@dataclass
class ModelInfo:
    name: str
    backend: str
    kind: str  # cpu | gpu (Triton's instance kind, from config.pbtxt)
    count: int  # instance_group count (per GPU for KIND_GPU)
    weights_bytes: int
    threads: int | None = None
    tensorrt_version: str | None = None  # the engine's (tensorrt backend, or python runtime trt)


@dataclass
class DeployPlan:
    repo: Path
    options: DeployOptions
    name: str
    backend: str
    runtime: str
    models: list[ModelInfo]
    gpus: int
    image: str
    release: str  # the Triton release behind the image (or the Python image's base)
    build_image: bool  # python backend: image/Dockerfile must be built and pushed
    pip_pins: list[str]  # python backend: extra pins for the image (the engines' TensorRT)
    repository: str  # what tritonserver's --model-repository gets
    cpu: str
    memory: str
    memory_limit: str
    ephemeral: str | None  # object-store repositories are copied to local disk by Triton
    notes: list[str] = field(default_factory=list)

    @property
    def needs_gpu(self) -> bool:
        return any(m.kind == "gpu" for m in self.models)

    @property
    def autoscale(self) -> bool:
        return self.max_replicas > self.options.replicas

    @property
    def max_replicas(self) -> int:
        o = self.options
        return o.max_replicas if o.max_replicas is not None else max(o.replicas, 4)

    @property
    def scheme(self) -> str | None:
        uri = self.options.model_repository
        return uri.split("://", 1)[0] if uri else None


# -------------------------------------------------------------------------------------------------- options


def _check_options(o: DeployOptions) -> None:
    if o.target not in TARGETS:
        raise UserError(f"unknown --target {o.target!r}; choose one of: {', '.join(TARGETS)}")
    if o.replicas < 1 or o.replicas > 1000:
        raise UserError(f"--replicas must be between 1 and 1000 (got {o.replicas})")
    if o.max_replicas is not None and not o.replicas <= o.max_replicas <= 1000:
        raise UserError(
            f"--max-replicas must be between --replicas ({o.replicas}) and 1000 (got {o.max_replicas})"
        )
    if not 1 <= o.drain_timeout <= 3600:
        raise UserError(f"--drain-timeout must be between 1 and 3600 seconds (got {o.drain_timeout})")
    if o.gpus is not None and not 0 <= o.gpus <= 16:
        raise UserError(f"--gpus must be between 0 and 16 per pod (got {o.gpus})")
    if not 1 <= o.target_cpu_utilization <= 100:
        raise UserError(f"--target-cpu-utilization must be 1-100 % (got {o.target_cpu_utilization})")
    if not 1 <= o.target_queue_us <= 60_000_000:
        raise UserError(f"--target-queue-us must be between 1 and 60000000 (got {o.target_queue_us})")
    for option, value in (("--cpu", o.cpu), ("--memory", o.memory)):
        if value is not None and not _QUANTITY.fullmatch(value):
            raise UserError(f"{option} takes a Kubernetes quantity such as 2, 500m or 8Gi (got {value!r})")
    if o.name is not None and not _DNS_LABEL.fullmatch(o.name):
        raise UserError(
            f"--name {o.name!r} must be a DNS label: 1-63 lowercase letters, digits or '-', starting with a letter"
        )
    for option, value in (
        ("--namespace", o.namespace),
        ("--pvc", o.pvc),
        ("--credentials-secret", o.credentials_secret),
        ("--service-account", o.service_account),
    ):
        if value is not None and not _DNS_SUBDOMAIN.fullmatch(value):
            raise UserError(
                f"{option} {value!r} is not a Kubernetes name (lowercase letters, digits, '-', '.')"
            )
    if o.namespace is not None and not _DNS_LABEL.fullmatch(o.namespace):
        raise UserError(f"--namespace {o.namespace!r} must be a DNS label (lowercase letters, digits, '-')")
    for key, _ in o.node_selector:
        if not re.fullmatch(r"([a-z0-9.-]+/)?[A-Za-z0-9][-A-Za-z0-9_.]{0,62}", key):
            raise UserError(f"--node-selector key {key!r} is not a Kubernetes label key")
    _check_source(o)


def _check_source(o: DeployOptions) -> None:
    if (o.pvc is None) == (o.model_repository is None):
        raise UserError(
            "say where pods read the repository: --pvc CLAIM (a PersistentVolumeClaim holding it) or "
            "--model-repository s3://…|gs://…|as://… (Triton reads object stores itself)"
        )
    if o.pvc_path and (o.pvc is None or o.pvc_path.startswith("/") or ".." in o.pvc_path.split("/")):
        raise UserError("--pvc-path is a relative directory inside the --pvc claim (no '/' first, no '..')")
    if o.pvc is not None and o.credentials_secret:
        raise UserError("--credentials-secret applies to --model-repository object stores, not to --pvc")
    uri = o.model_repository
    if uri is None:
        return
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise UserError(
            f"--model-repository {uri!r}: Triton reads s3://BUCKET/PATH, gs://BUCKET/PATH and "
            "as://ACCOUNT/CONTAINER/PATH; copy the repository to one of those, or use --pvc"
        )
    parts = [p for p in rest.split("/") if p]
    if not parts or (scheme == "as" and len(parts) < 2) or any(c.isspace() for c in rest):
        form = "as://ACCOUNT/CONTAINER/PATH" if scheme == "as" else f"{scheme}://BUCKET/PATH"
        raise UserError(f"--model-repository {uri!r} names no bucket; write it as {form}")
    if o.target == "kserve" and o.credentials_secret:
        raise UserError(
            "KServe's storage initializer reads credentials from a ServiceAccount, not a Secret in the pod: pass "
            "--service-account NAME (a ServiceAccount with the Secret attached)"
        )
    if o.target == "kserve" and scheme == "s3" and ":" in parts[0]:
        raise UserError(
            f"--model-repository {uri!r}: KServe takes s3://BUCKET/PATH; set a custom S3 endpoint on the "
            "ServiceAccount's Secret (annotation serving.kserve.io/s3-endpoint) instead of in the URI"
        )


def default_name(repo: Path) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", repo.resolve().name.lower()).strip("-")[:63].strip("-")
    if not name or not name[0].isalpha():
        name = f"triton-{name}".strip("-")[:63].strip("-")
    return name


# ----------------------------------------------------------------------------------------------- repository


def read_record(repo: Path) -> dict:
    path = repo / MANIFEST
    if not repo.is_dir() or not path.is_file():
        raise UserError(
            f"{repo} is not a trtpipe Triton repository (no {MANIFEST}); write one with "
            "`trtpipe triton BUNDLE... --out REPO`"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not readable JSON ({exc}); rewrite the repository with `trtpipe triton`"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("models"), dict) or not record["models"]:
        raise UserError(f"{path} lists no models; rewrite the repository with `trtpipe triton`")
    return record


def _model(repo: Path, name: str, entry: dict, runtime: str, threads) -> ModelInfo:
    from .config import InvalidConfig, model_config_pb2, validate_config

    model_dir = repo / name
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise UserError(
            f"{repo}: model {name} is listed but {config_path.name} is missing; rewrite the repository"
        )
    try:
        config = validate_config(config_path.read_text(encoding="utf-8"), expected_name=name)
    except InvalidConfig as exc:
        raise UserError(f"{config_path}: {exc}; rewrite the repository with `trtpipe triton`") from None
    gpu = model_config_pb2().ModelInstanceGroup.KIND_GPU
    groups = list(config.instance_group) or []
    kind = "gpu" if any(g.kind == gpu for g in groups) else "cpu"
    count = sum(max(g.count, 1) for g in groups) or 1
    backend = entry.get("backend", "")
    version_dir = model_dir / VERSION
    trt = None
    if backend == "python":
        weights, trt = _python_weights(version_dir / "bundle", entry, runtime)
    else:
        weights = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
        if backend == "tensorrt":
            trt = entry.get("tensorrt_version") or _engine_version(entry)
    return ModelInfo(name, backend, kind, count, weights, threads if backend == "python" else None, trt)


def _python_weights(bundle_dir: Path, entry: dict, runtime: str) -> tuple[int, str | None]:
    """Bytes of the variant the model runs, and the TensorRT of its engines (runtime trt / ort-trt)."""
    try:
        manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(
            f"{bundle_dir}: the bundle copy has no readable manifest; rewrite the repository"
        ) from None
    variant = entry.get("variant")
    variant = variant if variant and variant != "default" else "fp32"
    found = (manifest.get("variants") or {}).get(variant) or {}
    weights = found.get("bytes") or (manifest.get("model") or {}).get("parameter_bytes") or 0
    versions = {
        e.get("tensorrt_version")
        for e in (manifest.get("engines") or {}).values()
        if e.get("flavour") == "trt10" and e.get("tensorrt_version")
    }
    if runtime != "trt" or not versions:
        return int(weights), None
    if len(versions) > 1:
        raise UserError(
            f"{bundle_dir} has engines from TensorRT {', '.join(sorted(versions))}; one image has one TensorRT: "
            "rebuild them with one version"
        )
    return int(weights), versions.pop()


def _engine_version(entry: dict) -> str | None:
    """Repositories written before the record kept it: ask the bundle it came from, when it is still there."""
    path, engine = entry.get("bundle"), entry.get("engine")
    if not path or not engine or not Path(path).is_dir():
        return None
    try:
        return Bundle.load(path).engines.get(engine, {}).get("tensorrt_version")
    except UserError:
        return None


# ---------------------------------------------------------------------------------------------------- plan


def plan_deployment(repo: str | Path, options: DeployOptions) -> DeployPlan:
    """Read the repository and decide everything; raises UserError before anything is written."""
    _check_options(options)
    repo = Path(repo)
    record = read_record(repo)
    settings = record.get("options") or {}
    backend, runtime = settings.get("backend", "python"), settings.get("runtime", "ort-cpu")
    if backend not in TRITON_BACKENDS:
        raise UserError(
            f"{repo / MANIFEST}: backend {backend!r} is not one `trtpipe deploy` knows "
            f"({', '.join(TRITON_BACKENDS)}); upgrade trtpipe or rewrite the repository"
        )
    if backend == "python" and runtime not in PYTHON_EXTRAS:
        raise UserError(
            f"{repo / MANIFEST}: runtime {runtime!r} is not one of {', '.join(BACKENDS)}; rewrite the repository"
        )
    models = [
        _model(repo, name, entry if isinstance(entry, dict) else {}, runtime, settings.get("threads"))
        for name, entry in sorted(record["models"].items())
    ]
    gpus = _gpus(models, options, repo)
    image, release, pins = _image(models, backend, options)
    cpu, memory, limit = _size(models, gpus, options)
    repository = options.model_repository or "/".join(p for p in (MOUNT, options.pvc_path.strip("/")) if p)
    ephemeral = None
    if options.model_repository:
        total = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
        ephemeral = f"{_mib(total * 1.1 + 1024 * MIB)}Mi"
    plan = DeployPlan(
        repo, options, options.name or default_name(repo), backend, runtime, models, gpus, image, release,
        build_image=backend == "python" and options.image is None, pip_pins=pins, repository=repository,
        cpu=cpu, memory=memory, memory_limit=limit, ephemeral=ephemeral,
    )  # fmt: skip
    if plan.build_image:
        plan.notes.append(
            f"the Python backend needs trtpipe in the container: build image/Dockerfile, push it, and pass "
            f"--image REGISTRY/{PYTHON_IMAGE} (until then the manifests name {PYTHON_IMAGE})"
        )
    return plan


def _gpus(models: list[ModelInfo], options: DeployOptions, repo: Path) -> int:
    needs = [m.name for m in models if m.kind == "gpu"]
    if options.gpus is None:
        return 1 if needs else 0
    if needs and options.gpus == 0:
        raise UserError(
            f"{repo}: model {needs[0]} runs on a GPU (KIND_GPU: --backend tensorrt or a GPU --runtime) but "
            "--gpus 0 gives pods none; pass --gpus 1, or rewrite the repository with --device cpu"
        )
    return options.gpus


def _image(models: list[ModelInfo], backend: str, options: DeployOptions) -> tuple[str, str, list[str]]:
    engines = {m.tensorrt_version for m in models if m.tensorrt_version or m.backend == "tensorrt"}
    if backend == "python":
        pins = [f"tensorrt=={v}" for v in sorted(v for v in engines if v)]
        return options.image or PYTHON_IMAGE, default_release(), pins
    if options.image:
        return options.image, "", []
    if backend == "tensorrt":
        releases = {
            release_for_tensorrt(m.tensorrt_version, f"the engine of model {m.name}")
            for m in models
            if m.backend == "tensorrt"
        }
        if len(releases) > 1:
            raise UserError(
                f"the engines need different Triton releases ({', '.join(sorted(releases))}: their TensorRT "
                "versions differ) and a pod runs one; rebuild them with one TensorRT, or pass --image"
            )
        release = releases.pop()
        return triton_image(release), release, []
    release = default_release()
    return triton_image(release), release, []


def _mib(n: float) -> int:
    return int(-(-n // (64 * MIB)) * 64)  # rounded up to 64 MiB


def _size(models: list[ModelInfo], gpus: int, options: DeployOptions) -> tuple[str, str, str]:
    """CPU and memory requests from the weights: every instance holds its own copy (ONNX Runtime sessions and
    Python-backend processes alike) plus working memory; tritonserver itself takes about 512 MiB."""
    memory = 512 * MIB
    millicores = 500  # HTTP/gRPC front end
    for m in models:
        instances = m.count * (max(gpus, 1) if m.kind == "gpu" else 1)
        overhead = 320 * MIB if m.backend == "python" else 64 * MIB
        memory += instances * (m.weights_bytes * 1.25 + overhead)
        millicores += instances * (1000 * (m.threads or 1) if m.kind == "cpu" else 250)
    request = f"{_mib(memory)}Mi"
    cpu = options.cpu or (
        f"{millicores // 1000}" if millicores % 1000 == 0 else f"{-(-millicores // 100) * 100}m"
    )
    memory_request = options.memory or request
    return cpu, memory_request, options.memory or f"{_mib(memory) * 2}Mi"


__all__ = ["DeployOptions", "DeployPlan", "ModelInfo", "plan_deployment", "CREDENTIAL_ENV", "PYTHON_IMAGE"]
