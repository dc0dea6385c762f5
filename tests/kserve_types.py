"""Checks KServe objects against the kserve SDK's generated types, run as a script by test_deploy.py (JSON list of
objects on stdin; exit 1 with the first problem on stderr). A separate interpreter: importing kserve registers
Triton's gRPC protos under the names tritonclient registers, so the two cannot share a process."""

from __future__ import annotations

import json
import re
import sys


def _class(name: str):
    import kserve.models
    import kubernetes.client.models

    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)


def check(value, type_name: str = "V1beta1InferenceService", path: str = "") -> None:
    """Every key must be a field of its type, every value of the field's type, required fields present; the
    Kubernetes types KServe embeds (containers, resources, metadata) are the client's strict pydantic models."""
    where = path or type_name
    inner = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    if inner:
        assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
        for i, item in enumerate(value):
            check(item, inner.group(1), f"{where}[{i}]")
        return
    inner = re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name)
    if inner:
        assert isinstance(value, dict) and all(isinstance(k, str) for k in value), f"{where}: expected a map"
        for key, item in value.items():
            check(item, inner.group(1) or inner.group(2), f"{where}.{key}")
        return
    if type_name.endswith("Quantity") or type_name == "IntOrString":
        assert isinstance(value, (str, int)) and not isinstance(value, bool), f"{where}: {value!r}"
        return
    primitive = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitive:
        assert isinstance(value, primitive[type_name]), f"{where}: {value!r} is not {type_name}"
        assert type_name == "bool" or not isinstance(value, bool), f"{where}: {value!r} is not {type_name}"
        return
    cls = _class(type_name)
    assert cls is not None, f"{where}: unknown type {type_name}"
    if hasattr(cls, "model_validate"):  # kubernetes>=35: pydantic, extra fields forbidden
        try:
            cls.model_validate(value)
        except Exception as exc:
            raise AssertionError(f"{where}: {type_name}: {str(exc).splitlines()[1:3]}") from None
        return
    assert isinstance(value, dict), f"{where}: expected {type_name}, got {value!r}"
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    assert not unknown, f"{where}: {type_name} has no field {unknown[0]!r}"
    for key, item in value.items():
        check(item, cls.openapi_types[by_json[key]], f"{where}.{key}")
    try:
        cls(**{by_json[k]: v for k, v in value.items()})  # required fields and allowed values
    except ValueError as exc:
        raise AssertionError(f"{where}: {exc}") from None


if __name__ == "__main__":
    for doc in json.loads(sys.stdin.read()):
        check(doc)
    print("ok")
