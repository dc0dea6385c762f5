"""Optimization profiles at run time: which profile holds a set of input shapes (decoders: 0 = prefill, 1 = decode),
why a shape does not fit, and how many bytes each I/O buffer needs at the profiles' maxima."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import UserError

PREFILL, DECODE = 0, 1


def fmt_shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def shape_problem(profile: dict, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why `shapes` do not fit `profile` (None if they do). Profiles: {"name", "shapes": {input: {min,opt,max}}}."""
    for name, shape in shapes.items():
        bounds = profile["shapes"].get(name)
        if bounds is None:
            return f"the engine has no input {name!r}"
        low, high = bounds["min"], bounds["max"]
        if len(shape) != len(low):
            return f"input {name!r} has rank {len(shape)}, the engine expects {len(low)}"
        for axis, (size, lo, hi) in enumerate(zip(shape, low, high)):
            if not lo <= size <= hi:
                return (
                    f"input {name!r} has shape {fmt_shape(shape)}, outside the engine's {profile.get('name', 'profile')} "
                    f"profile (min {fmt_shape(low)}, max {fmt_shape(high)}; axis {axis} is {size})"
                )
    return None


def select_profile(
    profiles: list[dict], shapes: dict[str, tuple[int, ...]], bundle_path: Path | str | None = None
) -> int:
    """Index of the profile that holds `shapes`. Decoders pick by phase: empty past → prefill (0), else decode (1)."""
    if not profiles:
        raise UserError(
            "the engine's manifest entry lists no optimization profiles; rebuild it with `trtpipe build`"
        )
    past = next((s for n, s in shapes.items() if n.startswith("past_key_values.")), None)
    if len(profiles) == 2 and past is not None:
        candidates = [PREFILL] if past[2] == 0 else [DECODE]
    else:
        candidates = list(range(len(profiles)))
    problems = []
    for index in candidates:
        problem = shape_problem(profiles[index], shapes)
        if problem is None:
            return index
        problems.append(problem)
    hint = (
        f"`trtpipe build {bundle_path} --max-shapes …`" if bundle_path else "`trtpipe build … --max-shapes …`"
    )
    raise UserError(f"{problems[0]}; send smaller inputs or rebuild the engine with larger shapes: {hint}")


def io_capacities(
    profiles: list[dict],
    input_itemsize: dict[str, int],
    output_itemsize: dict[str, int],
    output_shapes: Callable[[int, dict[str, tuple]], dict[str, tuple]],
) -> dict[str, int]:
    """Bytes each I/O tensor needs: the largest over profiles of its max shape. `output_shapes(profile, input max
    shapes)` reports the engine's output shapes for those inputs. Every buffer gets at least one element so that
    zero-size tensors (an empty past) still have a valid address."""
    sizes: dict[str, int] = {}
    for index, profile in enumerate(profiles):
        maxima = {name: tuple(b["max"]) for name, b in profile["shapes"].items()}
        for name, shape in maxima.items():
            sizes[name] = max(sizes.get(name, 0), int(np.prod(shape, dtype=np.int64)) * input_itemsize[name])
        for name, shape in output_shapes(index, maxima).items():
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name} has an unresolved shape {shape} at the profile maximum")
            volume = int(np.prod(shape, dtype=np.int64))
            sizes[name] = max(sizes.get(name, 0), volume * output_itemsize[name])
    for name, itemsize in {**input_itemsize, **output_itemsize}.items():
        sizes[name] = max(sizes.get(name, 0), itemsize)
    return sizes
