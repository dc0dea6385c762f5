"""CLI: `doctor` — versions, GPUs, ONNX Runtime providers, what each backend needs, known-bad combinations."""

from __future__ import annotations

from ._common import JsonOpt, command, print_json


@command("doctor")
def doctor_cmd(as_json: JsonOpt = False):
    """Versions, GPUs, ONNX Runtime providers, what each backend needs, and known-bad combinations."""
    from ..doctor import diagnose, print_diagnosis

    diagnosis = diagnose()
    if as_json:
        print_json(diagnosis.to_dict())
        return
    print_diagnosis(diagnosis)
