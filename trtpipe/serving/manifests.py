"""A deploy plan as Kubernetes objects — a Deployment of tritonserver, its Service and HorizontalPodAutoscaler, or a
KServe InferenceService on KServe's Triton runtime — and a small YAML writer for them (every string quoted)."""

from __future__ import annotations

import json
import re

from .. import __version__
from .deploy_plan import CREDENTIAL_ENV, GCS_KEY_DIR, GCS_KEY_FILE, MOUNT, DeployPlan

PORTS = (("http", 8000), ("grpc", 8001), ("metrics", 8002))
PRESTOP_S = 5  # the endpoint leaves the Service before tritonserver starts draining
GRACE_MARGIN_S = 5
QUEUE_METRIC = "triton_queue_us_per_request"  # what the Prometheus adapter rule below exposes per pod


def labels(plan: DeployPlan) -> dict:
    return {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": plan.name}


def _metadata(plan: DeployPlan, name: str | None = None, **extra) -> dict:
    meta = {"name": name or plan.name}
    if plan.options.namespace:
        meta["namespace"] = plan.options.namespace
    meta["labels"] = {
        **labels(plan),
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/managed-by": "trtpipe",
    }
    meta.update(extra)
    return meta


def grace_seconds(plan: DeployPlan) -> int:
    """terminationGracePeriodSeconds: the preStop pause, tritonserver's --exit-timeout-secs, and a margin."""
    return PRESTOP_S + plan.options.drain_timeout + GRACE_MARGIN_S


def tritonserver_args(plan: DeployPlan, repository: str) -> list[str]:
    return [
        f"--model-repository={repository}",
        f"--exit-timeout-secs={plan.options.drain_timeout}",
        "--strict-readiness=true",
    ]


def resources(plan: DeployPlan) -> dict:
    requests = {"cpu": plan.cpu, "memory": plan.memory}
    limits = {"memory": plan.memory_limit}  # no CPU limit: throttling a server costs latency, not fairness
    if plan.ephemeral:
        requests["ephemeral-storage"] = plan.ephemeral
    if plan.gpus:
        limits["nvidia.com/gpu"] = str(plan.gpus)  # extended resources: requests default to the limit
    return {"requests": requests, "limits": limits}


def _credentials(plan: DeployPlan) -> tuple[list[dict], list[dict], list[dict]]:
    """env, volumeMounts and volumes that hand the credentials Secret to tritonserver."""
    secret, scheme = plan.options.credentials_secret, plan.scheme
    if not secret or not scheme:
        return [], [], []
    if scheme == "gs":
        env = [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_KEY_DIR}/{GCS_KEY_FILE}"}]
        mounts = [{"name": "gcs-credentials", "mountPath": GCS_KEY_DIR, "readOnly": True}]
        volumes = [{"name": "gcs-credentials", "secret": {"secretName": secret}}]
        return env, mounts, volumes
    env = []
    for variable, optional in CREDENTIAL_ENV[scheme]:
        ref = {"name": secret, "key": variable}
        if optional:
            ref["optional"] = True
        env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    if scheme == "s3":
        ref = {"name": secret, "key": "AWS_DEFAULT_REGION", "optional": True}
        env.append({"name": "AWS_DEFAULT_REGION", "valueFrom": {"secretKeyRef": ref}})
    return env, [], []


def _probe(path: str, period: int, failures: int) -> dict:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def deployment(plan: DeployPlan) -> dict:
    env, mounts, volumes = _credentials(plan)
    if plan.options.pvc:
        mounts.append({"name": "model-repository", "mountPath": MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "model-repository",
                "persistentVolumeClaim": {"claimName": plan.options.pvc, "readOnly": True},
            }
        )
    if plan.backend == "python":  # each Python-backend stub talks to the server through /dev/shm
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    container = {
        "name": "tritonserver",
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["tritonserver"],
        "args": tritonserver_args(plan, plan.repository),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS],
        "startupProbe": _probe("/v2/health/ready", 10, 60),  # up to 10 minutes to load the models
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 6),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "resources": resources(plan),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict = {"terminationGracePeriodSeconds": grace_seconds(plan), "containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    if plan.options.service_account:
        pod["serviceAccountName"] = plan.options.service_account
    if plan.options.node_selector:
        pod["nodeSelector"] = dict(plan.options.node_selector)
    if plan.gpus:  # GPU node pools are commonly tainted so that only GPU pods land there
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8002",
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(plan, annotations=_record(plan)),
        "spec": {
            "replicas": plan.options.replicas,
            "selector": {"matchLabels": labels(plan)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels(plan), "annotations": annotations}, "spec": pod},
        },
    }


def _record(plan: DeployPlan) -> dict:
    return {
        "trtpipe/written-by": f"trtpipe {__version__}",
        "trtpipe/backend": plan.backend if plan.backend != "python" else f"python ({plan.runtime})",
        "trtpipe/models": ",".join(m.name for m in plan.models),
    }


def service(plan: DeployPlan) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(plan),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(plan),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in PORTS
            ],
        },
    }


def autoscaler(plan: DeployPlan) -> dict:
    """CPU repositories scale on CPU utilisation; GPU ones on the time requests wait in Triton's queue (a GPU
    at work shows no CPU load, and a queue that grows is what a busy GPU looks like from outside)."""
    if plan.needs_gpu:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(plan.options.target_queue_us)},
            },
        }
    else:
        target = {"type": "Utilization", "averageUtilization": plan.options.target_cpu_utilization}
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": target}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(plan),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": plan.options.replicas,
            "maxReplicas": plan.max_replicas,
            "metrics": [metric],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def adapter_rules() -> dict:
    """prometheus-adapter (Helm values) rule: Triton's cumulative queue time over its successful requests, per
    pod, over the last minute — the Pods metric the GPU autoscaler reads."""
    rate = "sum(rate({m}{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>)"
    query = (
        f"{rate.format(m='nv_inference_queue_duration_us')} / "
        f"clamp_min({rate.format(m='nv_inference_request_success')}, 1)"
    )
    return {
        "rules": {
            "custom": [
                {
                    "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
                    "resources": {
                        "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                    },
                    "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
                    "metricsQuery": query,
                }
            ]
        }
    }


def storage_uri(plan: DeployPlan) -> str:
    """KServe's form of the repository's place: pvc://CLAIM/PATH, s3://, gs://, or Azure's https blob URL."""
    o = plan.options
    if o.pvc:
        return "/".join(p for p in (f"pvc://{o.pvc}", o.pvc_path.strip("/")) if p)
    uri = o.model_repository or ""
    if uri.startswith("as://"):
        account, _, rest = uri[len("as://") :].partition("/")
        return f"https://{account}.blob.core.windows.net/{rest}"
    return uri


def inference_service(plan: DeployPlan) -> dict:
    """KServe InferenceService: spec.predictor.model with modelFormat triton on the kserve-tritonserver runtime
    (KServe downloads storageUri to /mnt/models and runs tritonserver on it)."""
    model: dict = {
        "modelFormat": {"name": "triton"},
        "runtime": "kserve-tritonserver",
        "protocolVersion": "v2",
        "storageUri": storage_uri(plan),
        "args": tritonserver_args(plan, "/mnt/models")[1:],  # the runtime passes --model-store itself
        "resources": resources(plan),
    }
    if plan.backend == "python" or plan.options.image:
        model["image"] = plan.image
    else:
        model["runtimeVersion"] = plan.image.rpartition(":")[2]
    predictor: dict = {
        "minReplicas": plan.options.replicas,
        "maxReplicas": plan.max_replicas,
        "terminationGracePeriodSeconds": grace_seconds(plan),
        "model": model,
    }
    annotations = {"serving.kserve.io/deploymentMode": "RawDeployment", **_record(plan)}
    if plan.autoscale and plan.needs_gpu:  # KEDA asks Prometheus for the average queue time per request
        annotations["serving.kserve.io/autoscalerClass"] = "keda"
        query = (
            f'sum(rate(nv_inference_queue_duration_us{{namespace="{plan.options.namespace or "default"}",'
            f'pod=~"{plan.name}-predictor-.*"}}[1m])) / clamp_min(sum(rate(nv_inference_request_success'
            f'{{namespace="{plan.options.namespace or "default"}",pod=~"{plan.name}-predictor-.*"}}[1m])), 1)'
        )
        predictor["autoScaling"] = {
            "metrics": [
                {
                    "type": "PodMetric",
                    "podmetric": {
                        "metric": {
                            "backend": "prometheus",
                            "serverAddress": plan.options.prometheus_url,
                            "query": query,
                        },
                        "target": {"type": "Value", "value": str(plan.options.target_queue_us)},
                    },
                }
            ]
        }
    elif plan.autoscale:
        predictor["scaleMetric"] = "cpu"
        predictor["scaleTarget"] = plan.options.target_cpu_utilization
    if plan.options.service_account:
        predictor["serviceAccountName"] = plan.options.service_account
    if plan.options.node_selector:
        predictor["nodeSelector"] = dict(plan.options.node_selector)
    if plan.gpus:
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    meta = {"name": plan.name}
    if plan.options.namespace:
        meta["namespace"] = plan.options.namespace
    meta["annotations"] = annotations
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }


# ---------------------------------------------------------------------------------------------------- YAML

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists, str, int, float, bool and None. Strings are JSON-quoted (a JSON string is
    a YAML double-quoted scalar), so no value can be read back as another type ("true", "1.10", "on")."""
    return "".join(_lines(value, indent)) or "{}\n"


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)


def _key(key: str) -> str:
    return (
        key
        if _PLAIN_KEY.fullmatch(key) and key not in ("true", "false", "null", "yes", "no", "on", "off")
        else json.dumps(key)
    )


def _lines(value, indent: int):
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                yield f"{pad}{_key(key)}:\n"
                yield from _lines(item, indent + (2 if isinstance(item, dict) else 0))
            else:
                yield f"{pad}{_key(key)}: {_empty(item) if isinstance(item, (dict, list)) else _scalar(item)}\n"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                first, *rest = list(_lines(item, indent + 2))
                yield f"{pad}- {first[indent + 2 :]}"
                yield from rest
            else:
                yield f"{pad}- {_empty(item) if isinstance(item, (dict, list)) else _scalar(item)}\n"
    else:
        yield f"{pad}{_scalar(value)}\n"


def _empty(value) -> str:
    return "{}" if isinstance(value, dict) else "[]"


__all__ = ["adapter_rules", "autoscaler", "deployment", "inference_service", "service", "to_yaml"]
