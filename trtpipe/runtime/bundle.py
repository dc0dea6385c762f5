"""`Bundle`: an exported model directory read through its manifest; every file it hands out is confined to the
directory and checked against its sha256 (ONNX external data included) before use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..models import MODELS, KindSpec, ModelSpec
from .errors import UserError
from .manifest import MANIFEST, validate_manifest
from .onnx_scan import ScanError, node_names
from .paths import inside, read_json, sha256_file

# the smallest MatMulNBits block whose CPU kernel takes rows two at a time and rounds an odd last row otherwise
# (measured; `optimize/pair_rows.py` pads to even row counts from this block up)
PAIRED_BLOCK = 64
PAIR_PREFIX = "/pair_rows"  # the names of the nodes `pair_rows` adds


def weight_block(entry: dict) -> int | None:
    """The MatMulNBits block a weight-only variant's manifest entry records (`optimize --precision int4 | int8-wo`
    writes it in `report`); None for every other variant."""
    report = entry.get("report") or {}
    block = report.get("block_size")
    return int(block) if report.get("bits") and block else None


@dataclass
class Bundle:
    """An exported model directory and its manifest."""

    path: Path
    manifest: dict
    _verified: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        root = Path(path)
        if not root.exists():
            raise UserError(
                f"no bundle at {root}: check the path, or create one with `trtpipe export MODEL --out {root}`"
            )
        if not root.is_dir():
            raise UserError(
                f"{root} is a file, not a bundle directory: pass the directory `trtpipe export` wrote"
            )
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise UserError(
                f"{root} has no manifest.json: it is not a trtpipe bundle; create one with `trtpipe export`"
            )
        if manifest_path.stat().st_size > 16 << 20:
            raise UserError(f"bundle {root}: manifest.json is larger than 16 MiB; re-export the bundle")
        data = read_json(
            manifest_path, f"bundle {root}: manifest.json is corrupt ({{error}}); re-export the bundle"
        )
        return cls(root, validate_manifest(root, data))

    # -- manifest views
    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.family]

    @property
    def kind(self) -> KindSpec:
        """The sizes that depend on the kind of model (encoder or decoder): see models.KINDS."""
        return self.spec.kind_spec

    @property
    def is_decoder(self) -> bool:
        return self.spec.kind == "decoder"

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in (self.manifest.get("labels") or {}).items()}

    @property
    def limits(self) -> dict:
        return self.manifest["limits"]

    @property
    def max_length(self) -> int:
        return int(self.limits.get("max_length", self.limits["max_positions"]))

    @property
    def model(self) -> dict:
        return self.manifest.get("model", {})

    @property
    def variants(self) -> dict:
        return self.manifest["variants"]

    @property
    def engines(self) -> dict:
        return self.manifest.get("engines", {})

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.get("source", {}).get("random_weights"))

    @property
    def random_head(self) -> bool:
        """Real encoder weights under a task head the checkpoint did not have (initialised at random on export)."""
        source = self.manifest.get("source", {})
        return bool(source.get("random_head")) and not source.get("random_weights")

    @property
    def name(self) -> str:
        return self.path.name

    def input_names(self) -> list[str]:
        return [entry["name"] for entry in self.manifest["inputs"]]

    def output_names(self) -> list[str]:
        return [entry["name"] for entry in self.manifest["outputs"]]

    def file(self, relative: str) -> Path:
        return inside(self.path, relative)

    def tokenizer_file(self) -> Path:
        path = self.file(self.manifest["tokenizer"]["file"])
        if not path.is_file():
            raise UserError(f"bundle {self.path}: {path.name} is missing; re-export the bundle")
        return path

    def variant(self, name: str | None) -> dict:
        name = name or "fp32"
        if name not in self.variants:
            hint = f"trtpipe optimize {self.path} --precision {name}" if name != "fp32" else "trtpipe export"
            raise UserError(
                f"bundle {self.path} has no variant {name!r} (has: {', '.join(sorted(self.variants))}); create it with `{hint}`"
            )
        return self.variants[name]

    def stale(self, name: str) -> str | None:
        """Why twin `name` (a fused step or an int8 cache, made from another variant) no longer matches the variant
        it was made from (None: it does, or `name` is not such a twin: nothing recorded its source's hash)."""
        entry = self.variants[name]
        if "source_sha256" not in entry:
            return None
        source = self.variants.get(entry.get("made_from") or "")
        if source is None:
            return f"its source variant {entry.get('made_from')} is gone"
        if source.get("sha256") != entry.get("source_sha256"):
            return f"{entry['made_from']} was rebuilt after it"
        return None

    def unpaired(self, precision: str) -> str | None:
        """Why BatchEngine on weight variant `precision` may hand a request other tokens than it gets alone: its
        in-place twin was built at MatMulNBits block 64 or more before `optimize` paired rows there (`pair_rows.py`:
        the kernel rounds an odd last row differently). None where the twin is paired or needs no pairs."""
        entry = self.variants.get(f"{precision}.kv-inplace")
        block = weight_block(self.variants.get(precision, {})) or 0
        if entry is None or block < PAIRED_BLOCK or entry.get("paired_rows"):
            return None
        # twins made after pairs landed but before the manifest said so are paired all the same: the graph decides
        try:
            if any(
                n.startswith(PAIR_PREFIX)
                for n in node_names(self.model_path(f"{precision}.kv-inplace", verify=False))
            ):
                return None
        except (OSError, ScanError, UserError):
            pass  # an unreadable twin fails where it is opened, with its own message
        return (
            f"{precision}.kv-inplace of {self.path} was built at block {block} before rows were paired, so batched "
            "requests can differ from what each gets alone in their last digits (and then in their tokens); rebuild "
            f"it with `trtpipe optimize {self.path} --precision {precision} --block-size {block} --overwrite`"
        )

    def only_on(self, name: str | None) -> list[str]:
        """The backends that compute variant `name` as recorded, where only some can (bf16: OpenVINO's compute of
        model.onnx); [] when any backend that reads its file runs it."""
        return list(self.variant(name).get("backends", []))

    def runs_on(self, name: str | None, backend: str) -> bool:
        only = self.only_on(name)
        return not only or backend in only

    def verify_files(self, hashes: dict[str, str], what: str, fix: str) -> None:
        """Check that each file exists inside the bundle and has the recorded sha256."""
        for rel, expected in hashes.items():
            path = self.file(rel)
            if not path.is_file():
                raise UserError(f"bundle {self.path}: {rel} ({what}) is missing; {fix}")
            stat = path.stat()
            key = (rel, stat.st_size, stat.st_mtime_ns)
            if self._verified.get(rel) == key:
                continue
            if sha256_file(path) != expected:
                raise UserError(
                    f"bundle {self.path}: {rel} ({what}) does not match its sha256 in manifest.json "
                    f"(corrupt, truncated or edited); {fix}"
                )
            self._verified[rel] = key

    def file_problems(self, sha256: bool = False) -> dict[tuple[str, str], str]:
        """What no longer matches manifest.json, by ("variant", name), ("engine", file) or ("tokenizer", file): a
        missing file or a size other than the recorded bytes (one stat per file, always), and with `sha256` a
        different hash (reads every byte)."""
        problems: dict[tuple[str, str], str] = {}
        for name, entry in self.variants.items():
            problem = self._problem(entry["sha256"], entry.get("bytes"), sha256)
            if problem:
                problems["variant", name] = problem
        for file, entry in self.engines.items():
            if isinstance(entry, dict):
                problem = self._problem({file: entry.get("sha256")}, entry.get("bytes"), sha256)
                if problem:
                    problems["engine", file] = problem
        tok = self.manifest["tokenizer"]
        problem = self._problem({tok["file"]: tok.get("sha256")}, None, sha256)
        if problem:
            problems["tokenizer", tok["file"]] = problem
        return problems

    def _problem(self, hashes: dict[str, str | None], recorded: int | None, sha256: bool) -> str | None:
        paths = {rel: self.file(rel) for rel in hashes}
        missing = [rel for rel, path in paths.items() if not path.is_file()]
        if missing:
            return f"{missing[0]} is missing"
        size = sum(path.stat().st_size for path in paths.values())
        if isinstance(recorded, int) and size != recorded:
            return f"{size:,} bytes on disk, the manifest records {recorded:,}"
        if sha256:
            for rel, expected in hashes.items():
                if expected and sha256_file(paths[rel]) != expected:
                    return f"{rel} does not match its sha256 in manifest.json"
        return None

    def model_path(self, variant: str | None = None, verify: bool = True) -> Path:
        """Path of a variant's ONNX file, after checking every file of the variant against its sha256 and every
        external-data location inside the ONNX file against the bundle (confined, listed, hashed)."""
        entry = self.variant(variant)
        path = self.file(entry["file"])
        if verify:
            name = variant or "fp32"
            made_by = (
                "kv-fused"
                if name.endswith("-fused")
                else "kv8"
                if name.endswith("kv8-inplace")
                else name.removesuffix(".kv-inplace")
            )
            fix = (
                "re-export with `trtpipe export ... --overwrite`"
                if name in ("fp32", "kv-inplace", "all-logits")
                else f"recreate it with `trtpipe optimize {self.path} --precision {made_by} --overwrite`"
            )
            self.verify_files(entry["sha256"], f"variant {name}", fix)
            self.check_external_data(path, entry, fix)
        return path

    def check_external_data(self, path: Path, entry: dict, fix: str) -> None:
        from .onnx_scan import ScanError, external_data_locations

        try:
            locations = external_data_locations(path)
        except (ScanError, OSError, ValueError) as exc:
            raise UserError(
                f"bundle {self.path}: {path.name} is not a readable ONNX file ({exc}); {fix}"
            ) from None
        listed = {Path(rel).as_posix() for rel in entry["sha256"]}
        for tensor, location in locations:
            rel = (Path(entry["file"]).parent / location).as_posix()
            try:
                inside(self.path, rel)
            except UserError:
                raise UserError(
                    f"bundle {self.path}: {path.name} stores tensor {tensor!r} in {location!r}, outside the "
                    f"bundle; refusing to load it — {fix}"
                ) from None
            if Path(rel).as_posix() not in listed and Path(location).as_posix() not in listed:
                raise UserError(
                    f"bundle {self.path}: {path.name} reads external data {location!r}, which the manifest "
                    f"does not list (so it is not hash-checked); {fix}"
                )

    def reload(self) -> Bundle:
        return Bundle.load(self.path)
