"""CLI, many machines: `deploy` turns a Triton repository written by `trtpipe triton` into Kubernetes manifests
(Deployment, Service, HorizontalPodAutoscaler) or a KServe InferenceService."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import info, out, warn
from ..runtime.errors import UserError
from ._common import JsonOpt, QuietOpt, command, print_json


def _node_selector(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values or []:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise UserError(
                f"--node-selector takes KEY=VALUE, e.g. nvidia.com/gpu.product=NVIDIA-L4 (got {value!r})"
            )
        pairs.append((key, label))
    return tuple(pairs)


@command("deploy")
def deploy_cmd(
    repository: Annotated[
        Path, typer.Argument(help="Triton model repository (written by `trtpipe triton`)", show_default=False)
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="directory to write the manifests to")],
    target: Annotated[
        str,
        typer.Option("--target", help="kubernetes (Deployment, Service, HPA) or kserve (InferenceService)"),
    ] = "kubernetes",
    pvc: Annotated[
        str | None,
        typer.Option("--pvc", help="PersistentVolumeClaim holding the repository (mounted read-only)"),
    ] = None,
    pvc_path: Annotated[
        str, typer.Option("--pvc-path", help="the repository's directory inside the claim")
    ] = "",
    model_repository: Annotated[
        str | None,
        typer.Option("--model-repository", help="object-store URI Triton reads: s3://…, gs://…, as://…"),
    ] = None,
    credentials_secret: Annotated[
        str | None,
        typer.Option(
            "--credentials-secret",
            help="Secret with the store's variables (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AZURE_STORAGE_ACCOUNT/AZURE_STORAGE_KEY, or key.json for GOOGLE_APPLICATION_CREDENTIALS)",
        ),
    ] = None,
    service_account: Annotated[
        str | None, typer.Option("--service-account", help="pods' ServiceAccount (workload identity, KServe)")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="container image (default: the tritonserver release matching the engines' TensorRT; "
            "python backend: the image built from image/Dockerfile)",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="name of the objects (default: from REPO)")
    ] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="namespace of the objects")] = None,
    replicas: Annotated[int, typer.Option("--replicas", help="pods (the autoscaler's minimum)")] = 1,
    max_replicas: Annotated[
        int | None, typer.Option("--max-replicas", help="autoscaler's maximum (default max(replicas, 4))")
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="GPUs per pod (default 1 when the models run on a GPU)")
    ] = None,
    drain_timeout: Annotated[
        int,
        typer.Option(
            "--drain-timeout", help="seconds in-flight requests get on shutdown (--exit-timeout-secs)"
        ),
    ] = 30,
    cpu: Annotated[
        str | None, typer.Option("--cpu", help="CPU request (default: sized from the models)")
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option("--memory", help="memory request and limit (default: sized from the weights)"),
    ] = None,
    target_cpu_utilization: Annotated[
        int, typer.Option("--target-cpu-utilization", help="CPU repositories: HPA target, % of the request")
    ] = 70,
    target_queue_us: Annotated[
        int,
        typer.Option(
            "--target-queue-us", help="GPU repositories: HPA target, average queue time per request (µs)"
        ),
    ] = 20_000,
    node_selector: Annotated[
        list[str] | None, typer.Option("--node-selector", help="KEY=VALUE pod node selector (repeatable)")
    ] = None,
    prometheus_url: Annotated[
        str, typer.Option("--prometheus-url", help="kserve + GPU: the Prometheus KEDA queries")
    ] = "http://prometheus-operated.monitoring.svc:9090",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Write Kubernetes or KServe manifests that serve a Triton repository on many machines."""
    from ..serving.deploy import DeployOptions, write_deployment

    options = DeployOptions(
        target=target,
        name=name,
        namespace=namespace,
        image=image,
        pvc=pvc,
        pvc_path=pvc_path,
        model_repository=model_repository,
        credentials_secret=credentials_secret,
        service_account=service_account,
        replicas=replicas,
        max_replicas=max_replicas,
        gpus=gpus,
        drain_timeout=drain_timeout,
        cpu=cpu,
        memory=memory,
        target_cpu_utilization=target_cpu_utilization,
        target_queue_us=target_queue_us,
        node_selector=_node_selector(node_selector),
        prometheus_url=prometheus_url,
    )
    plan, files = write_deployment(repository, out_dir, options, overwrite=overwrite)
    summary = {
        "out": str(out_dir),
        "name": plan.name,
        "target": target,
        "image": plan.image,
        "gpus": plan.gpus,
        "cpu": plan.cpu,
        "memory": plan.memory,
        "replicas": [replicas, plan.max_replicas],
        "files": files,
    }
    if as_json:
        print_json(summary)
        return
    out.print(
        f"{plan.name}: {len(plan.models)} model{'s' if len(plan.models) != 1 else ''} ({plan.backend} backend), "
        f"image {plan.image}, {plan.gpus} GPU / CPU {plan.cpu} / memory {plan.memory} per pod, "
        f"{replicas}–{plan.max_replicas} replicas"
    )
    for note in plan.notes:
        warn(note)
    info(f"wrote {out_dir}: {', '.join(files)}")
    apply = (
        f"kubectl apply -f {out_dir / 'inferenceservice.yaml'}"
        if target == "kserve"
        else f"kubectl apply -f {out_dir}"
    )
    info(f"  next: put {repository} where the pods read it, then `{apply}` ({out_dir / 'README.md'})")
