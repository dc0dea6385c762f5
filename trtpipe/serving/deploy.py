"""A Triton repository → Kubernetes manifests (Deployment, Service, HorizontalPodAutoscaler) or a KServe
InferenceService, plus, for Python-backend models, the Dockerfile of an image with trtpipe's runtime in it.

```
DIR/
  deployment.yaml, service.yaml, hpa.yaml   --target kubernetes: `kubectl apply -f DIR`
  inferenceservice.yaml                     --target kserve
  prometheus-adapter/values.yaml            GPU autoscaling: the Pods metric the HPA reads
  image/Dockerfile (+ trtpipe-src/)         --backend python repositories: FROM tritonserver, pip install trtpipe
  README.md                                 what was written from what, and the commands to run
```
Staged in a temp dir beside DIR and renamed into place, as `trtpipe triton` does: an error leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import __version__
from ..runtime.errors import UserError
from ..runtime.store import staged_bundle
from . import manifests
from .deploy_plan import PYTHON_EXTRAS, DeployOptions, DeployPlan, plan_deployment
from .images import triton_image


def render(plan: DeployPlan) -> dict[str, str]:
    """Relative path → text of every file the plan writes (the trtpipe source copy aside)."""
    files: dict[str, str] = {}
    head = (
        f"# Written by trtpipe {__version__} (`trtpipe deploy {plan.repo}`); re-run it rather than editing.\n"
    )
    if plan.options.target == "kserve":
        files["inferenceservice.yaml"] = head + manifests.to_yaml(manifests.inference_service(plan))
    else:
        files["deployment.yaml"] = head + manifests.to_yaml(manifests.deployment(plan))
        files["service.yaml"] = head + manifests.to_yaml(manifests.service(plan))
        if plan.autoscale:
            files["hpa.yaml"] = head + manifests.to_yaml(manifests.autoscaler(plan))
            if plan.needs_gpu:
                files["prometheus-adapter/values.yaml"] = head + manifests.to_yaml(manifests.adapter_rules())
    if plan.backend == "python":
        files["image/Dockerfile"] = dockerfile(plan, has_source=trtpipe_source() is not None)
    files["README.md"] = readme(plan, sorted(files))
    return files


def trtpipe_source() -> Path | None:
    """The checkout trtpipe runs from, when it is one (pyproject.toml beside the package)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    try:
        if pyproject.is_file() and 'name = "trtpipe"' in pyproject.read_text(encoding="utf-8"):
            return root
    except OSError:
        return None
    return None


def dockerfile(plan: DeployPlan, has_source: bool) -> str:
    extra = PYTHON_EXTRAS[plan.runtime]
    target = f"/opt/trtpipe-src[{extra}]" if has_source else f"trtpipe[{extra}]=={__version__}"
    packages = " ".join(f'"{p}"' for p in [target, *plan.pip_pins])
    source = (
        "COPY trtpipe-src /opt/trtpipe-src\n"
        if has_source
        else "# trtpipe from your package index (this trtpipe was not run from a checkout to copy)\n"
    )
    name = plan.image if not plan.build_image else f"REGISTRY/{plan.image}"
    return (
        f"# Triton with trtpipe's runtime, for the Python-backend models of {plan.repo.name} "
        f"(runtime {plan.runtime}); written by trtpipe {__version__}.\n"
        f"#   docker build -t {name} image/ && docker push {name}\n"
        f"#   trtpipe deploy {plan.repo} --image {name} ...\n"
        "# The models' bundles are in the repository; the image only needs the code that serves them.\n"
        f"ARG TRITON_IMAGE={triton_image(plan.release)}\n"
        "FROM ${TRITON_IMAGE}\n"
        "# The container's Python is the one the Python backend's stub embeds: install into it.\n"
        "ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore\n"
        f"{source}"
        f"RUN python3 -m pip install {packages} \\\n"
        "    && python3 -c \"import trtpipe.runtime, trtpipe.serving; print('trtpipe', trtpipe.__version__)\"\n"
    )


def readme(plan: DeployPlan, files: list[str]) -> str:
    o = plan.options
    apply = "kubectl apply -f inferenceservice.yaml" if o.target == "kserve" else "kubectl apply -f ."
    source = o.model_repository or f"PersistentVolumeClaim {o.pvc}" + (
        f", directory {o.pvc_path}" if o.pvc_path else ""
    )
    steps = []
    if plan.backend == "python":
        name = f"REGISTRY/{plan.image}" if plan.build_image else plan.image
        steps.append(f"`docker build -t {name} image/ && docker push {name}`")
    if o.model_repository:
        steps.append(
            f"copy {plan.repo} to {o.model_repository} (e.g. `aws s3 sync` / `gcloud storage rsync` / `azcopy sync`)"
        )
    else:
        steps.append(
            f"copy {plan.repo} onto the claim {o.pvc}" + (f" under {o.pvc_path}/" if o.pvc_path else "")
        )
    steps.append(f"`{apply}`")
    models = "\n".join(
        f"| {m.name} | {m.backend} | {m.kind} | {m.count} | {m.weights_bytes / 2**20:,.1f} MiB |"
        for m in plan.models
    )
    scaling = (
        f"{plan.options.replicas}–{plan.max_replicas} replicas on "
        + (
            "the average queue time per request (Prometheus adapter rule in prometheus-adapter/)"
            if plan.needs_gpu
            else "CPU utilisation"
        )
        if plan.autoscale
        else f"{plan.options.replicas} replicas, no autoscaler (--max-replicas equals --replicas)"
    )
    return (
        f"# {plan.name}: Triton for {plan.repo.name}\n\n"
        f"Written by trtpipe {__version__} from `{plan.repo}` ({plan.backend} backend"
        + (f", runtime {plan.runtime}" if plan.backend == "python" else "")
        + f"); target {o.target}.\n\n"
        f"- image: `{plan.image}`\n- repository: {source}\n- per pod: {plan.gpus} GPU, CPU {plan.cpu}, "
        f"memory {plan.memory} (limit {plan.memory_limit})\n- scaling: {scaling}\n"
        f"- shutdown: tritonserver --exit-timeout-secs={o.drain_timeout}, "
        f"terminationGracePeriodSeconds {manifests.grace_seconds(plan)}\n\n"
        "| model | backend | kind | instances | weights |\n|---|---|---|---|---|\n"
        f"{models}\n\nSteps:\n\n"
        + "".join(f"{i}. {s}\n" for i, s in enumerate(steps, 1))
        + "\nFiles: "
        + ", ".join(f"`{f}`" for f in files if f != "README.md")
        + "\n"
    )


def _check_out(out: Path, repo: Path) -> bool:
    """Refuse an --out inside the repository (it would be uploaded with it) or a file; return whether it is an
    existing empty directory."""
    resolved, source = out.resolve(), repo.resolve()
    if resolved == source or source in resolved.parents or resolved in source.parents:
        raise UserError(f"--out {out} overlaps the repository {repo}; write the manifests beside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    return out.is_dir() and not out.is_symlink() and not any(out.iterdir())


def _copy_source(root: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (root / name).is_file():
            shutil.copy2(root / name, target / name)
    shutil.copytree(
        root / "trtpipe", target / "trtpipe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    )


def write_deployment(
    repo: str | Path, out: str | Path, options: DeployOptions, overwrite: bool = False
) -> tuple[DeployPlan, list[str]]:
    """Write the manifests for `repo` to `out`; atomic, and refuses a non-empty `out` without overwrite."""
    repo, out = Path(repo), Path(out)
    plan = plan_deployment(repo, options)
    empty = _check_out(out, repo)
    if out.exists() and not empty and not overwrite:
        raise UserError(
            f"{out} already exists and is not empty; pass --overwrite to replace it, or choose another --out"
        )
    files = render(plan)
    with staged_bundle(out, overwrite=overwrite or empty) as staging:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        root = trtpipe_source()
        if plan.backend == "python" and root is not None:
            _copy_source(root, staging / "image" / "trtpipe-src")
    return plan, sorted(files)


__all__ = ["DeployOptions", "DeployPlan", "render", "write_deployment"]
