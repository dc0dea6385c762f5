"""TensorRT-RTX ahead-of-time builds of every default bundle on this CPU-only machine (what `make engines` does,
rebuilt so that each build is timed): plan size against parameter bytes, and build time. The engines cannot run
here (no GPU). Writes the `engines` section of docs/benchmarks.md. Not part of `make bench` (a few minutes more).

    python bench/engines.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import BUNDLES, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundles", default=str(BUNDLES))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from trtpipe.engines.defaults import build_defaults
    from trtpipe.runtime import Bundle

    results = build_defaults(Path(args.bundles), flavour="rtx", overwrite=True)
    lines = [
        "| bundle | variant | parameters | plan | plan / parameters | build s |",
        "|---|---|---|---|---|---|",
    ]
    version = None
    for result in results:
        params = Bundle.load(result.bundle).model["parameter_bytes"]
        size = result.entry["bytes"]  # the plan as written, recorded in the manifest entry
        version = result.entry.get("tensorrt_version", version)
        profiles = len(result.entry.get("profiles", [])) or 1
        name = Path(result.bundle).name + (f" ({profiles} profiles)" if profiles > 1 else "")
        lines.append(
            f"| {name} | {result.entry.get('variant', '?')} | {params / 2**20:.1f} MiB | {size / 2**20:.1f} MiB | "
            f"{size / params:.2f} | {result.seconds:.1f} |"
        )
    lines += ["", f"TensorRT-RTX {version}, portable target (compute capability 8.0, 8.6, 8.9, 12.0+)."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("engines", body)


if __name__ == "__main__":
    main()
