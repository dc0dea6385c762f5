"""Bundle + manifest: the only reader and writer of manifest.json.

A bundle is a directory; every file in it is named by the manifest, confined to the directory and checked by
sha256 before use. Writes are atomic: new bundles are staged in a temp dir and swapped in, new variants are
written under temp names and renamed, and the manifest is replaced last (temp + rename) under a lock file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # the current and the previous format
MANIFEST = "manifest.json"
FAMILIES = ("bert", "albert", "gpt2")
TASKS = ("embed", "classify", "ner", "qa", "fill-mask", "generate")
DTYPES = ("int64", "int32", "float32", "float16", "bool")
# Sanity bounds: a manifest is untrusted input and sizes in it are checked before anything is allocated.
MAX_POSITIONS_LIMIT = 1 << 17
MAX_VOCAB_LIMIT = 1 << 22
MAX_DIM_LIMIT = 1 << 16
_TMP_MARK = ".tmp-"


# ----------------------------------------------------------------------------------------------- paths, hashes


def inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths, `..` and symlinks that lead outside."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UserError(
            f"bundle {root}: invalid file name {relative!r} in manifest.json; re-export the bundle"
        )
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise UserError(
            f"bundle {root}: absolute path {relative!r} in manifest.json is not allowed; re-export"
        )
    parts = Path(relative).parts
    if ".." in parts:
        raise UserError(f"bundle {root}: path {relative!r} leaves the bundle ('..'); re-export the bundle")
    root_real = root.resolve()
    target = (root / relative).resolve()
    if target != root_real and root_real not in target.parents:
        raise UserError(
            f"bundle {root}: {relative!r} points outside the bundle (symlink?); re-export the bundle"
        )
    return root / relative


def sha256_file(path: Path, chunk: int = 1 << 23) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ------------------------------------------------------------------------------------------------ validation


def _require(cond: bool, root: Path, what: str) -> None:
    if not cond:
        raise UserError(f"bundle {root}: manifest.json {what}; re-export the bundle with `trtpipe export`")


def _check_io(root: Path, entries: Any, kind: str) -> None:
    _require(isinstance(entries, list) and entries, root, f"has no {kind}")
    for entry in entries:
        _require(isinstance(entry, dict), root, f"has a malformed {kind} entry")
        _require(isinstance(entry.get("name"), str) and entry["name"], root, f"has a {kind} without a name")
        _require(
            entry.get("dtype") in DTYPES,
            root,
            f"{kind} {entry.get('name')!r} has dtype {entry.get('dtype')!r}",
        )
        shape = entry.get("shape")
        _require(
            isinstance(shape, list) and len(shape) <= 5, root, f"{kind} {entry['name']!r} has a bad shape"
        )
        for dim in shape:
            ok = (isinstance(dim, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_+\-]*", dim) is not None) or (
                isinstance(dim, int) and 0 <= dim <= MAX_VOCAB_LIMIT
            )
            _require(ok, root, f"{kind} {entry['name']!r} has an invalid dimension {dim!r}")


def validate_manifest(root: Path, data: Any) -> dict:
    """Check a manifest's schema and bounds; upgrade the previous format in memory. Returns the manifest."""
    _require(isinstance(data, dict), root, "is not a JSON object")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(
            f"bundle {root} has format_version {version}, newer than this trtpipe reads ({FORMAT_VERSION}); "
            "upgrade trtpipe (pip install -U trtpipe) or re-export the bundle with this version"
        )
    _require(version in READABLE_VERSIONS, root, f"has an unknown format_version {version!r}")
    if version == 1:
        data = upgrade_v1(data)
    _require(data.get("family") in FAMILIES, root, f"has an unknown family {data.get('family')!r}")
    _require(data.get("task") in TASKS, root, f"has an unknown task {data.get('task')!r}")
    _check_io(root, data.get("inputs"), "input")
    _check_io(root, data.get("outputs"), "output")
    limits = data.get("limits")
    _require(isinstance(limits, dict), root, "has no limits")
    for key, bound in (("max_positions", MAX_POSITIONS_LIMIT), ("vocab_size", MAX_VOCAB_LIMIT)):
        value = limits.get(key)
        _require(
            isinstance(value, int) and 0 < value <= bound, root, f"limits.{key}={value!r} is out of range"
        )
    max_length = limits.get("max_length", limits["max_positions"])
    _require(
        isinstance(max_length, int) and 0 < max_length <= limits["max_positions"],
        root,
        "limits.max_length is invalid",
    )
    model = data.get("model", {})
    _require(isinstance(model, dict), root, "has a malformed model section")
    for key in ("hidden_size", "num_layers", "num_heads", "head_dim"):
        value = model.get(key)
        _require(
            value is None or (isinstance(value, int) and 0 < value <= MAX_DIM_LIMIT),
            root,
            f"model.{key} is out of range",
        )
    labels = data.get("labels") or {}
    _require(
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values()), root, "has bad labels"
    )
    variants = data.get("variants")
    _require(isinstance(variants, dict) and "fp32" in variants, root, "has no fp32 variant")
    for name, variant in variants.items():
        _require(
            isinstance(variant, dict) and isinstance(variant.get("file"), str),
            root,
            f"variant {name!r} is malformed",
        )
        _require(
            isinstance(variant.get("sha256"), dict) and variant["sha256"],
            root,
            f"variant {name!r} has no sha256",
        )
        for rel in variant["sha256"]:
            inside(root, rel)
    engines = data.get("engines", {})
    _require(isinstance(engines, dict), root, "has a malformed engines section")
    for rel in engines:
        inside(root, rel)
    tok = data.get("tokenizer", {})
    _require(isinstance(tok, dict) and isinstance(tok.get("file"), str), root, "has no tokenizer entry")
    inside(root, tok["file"])
    return data


def upgrade_v1(data: dict) -> dict:
    """Format 1 had no `engines` section and no `limits.max_length`: lift it into format 2 in memory."""
    data = dict(data)
    data.setdefault("engines", {})
    if isinstance(data.get("limits"), dict):
        data["limits"] = {"max_length": data["limits"].get("max_positions"), **data["limits"]}
    data["format_version"] = FORMAT_VERSION
    data["upgraded_from"] = 1
    return data


# ----------------------------------------------------------------------------------------------------- Bundle


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
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(
                f"bundle {root}: manifest.json is corrupt ({exc.__class__.__name__}); re-export the bundle"
            ) from None
        return cls(root, validate_manifest(root, data))

    # -- manifest views
    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def is_decoder(self) -> bool:
        return self.task == "generate"

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

    def model_path(self, variant: str | None = None, verify: bool = True) -> Path:
        """Path of a variant's ONNX file, after checking every file of the variant against its sha256 and every
        external-data location inside the ONNX file against the bundle (confined, listed, hashed)."""
        entry = self.variant(variant)
        path = self.file(entry["file"])
        if verify:
            name = variant or "fp32"
            fix = (
                "re-export with `trtpipe export ... --overwrite`"
                if name == "fp32"
                else f"recreate it with `trtpipe optimize {self.path} --precision {name} --overwrite`"
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


# ------------------------------------------------------------------------------------------- atomic writing


class BundleLock:
    """An exclusive, non-blocking lock beside a bundle (`.<name>.lock`): a second writer gets a clear error.

    flock is released by the kernel if the holder dies (SIGKILL included); the file is removed on release and the
    inode is re-checked after locking so that a removed file cannot be locked twice.
    """

    def __init__(self, bundle_dir: Path):
        self.path = bundle_dir.parent / f".{bundle_dir.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> BundleLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    holder = ""
                    with contextlib.suppress(OSError):
                        holder = self.path.read_text().strip()
                    raise UserError(
                        f"another trtpipe process ({holder or 'unknown pid'}) is writing {self.path.parent / self.path.name[1:-5]}; "
                        "wait for it to finish, then run the command again"
                    ) from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}".encode())
                self.fd = fd
                return self
            os.close(fd)
        raise UserError(f"could not lock {self.path}; run the command again")

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE) (Linux); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def clean_stale(directory: Path, prefix: str) -> None:
    """Remove temp files/dirs left by a killed writer. Called under the lock, so nothing else owns them."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.name.startswith(prefix) and _TMP_MARK in child.name:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    child.unlink()


def temp_name(final: Path) -> Path:
    return final.parent / f".{final.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def staged_bundle(final: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir to build a new bundle in; on success it replaces `final` in one step."""
    final = Path(final)
    with BundleLock(final):
        clean_stale(final.parent, f".{final.name}{_TMP_MARK}")
        if final.exists() and not overwrite:
            raise UserError(
                f"{final} already exists; pass --overwrite to replace it, or choose another --out"
            )
        if final.exists() and not final.is_dir():
            raise UserError(f"{final} exists and is not a directory; remove it or choose another --out")
        staging = temp_name(final)
        staging.mkdir(parents=True)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if final.exists():
            if not _exchange(staging, final):
                old = temp_name(final)
                os.rename(final, old)
                os.rename(staging, final)
                staging = old
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.rename(staging, final)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = temp_name(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_manifest(bundle_dir: Path, manifest: dict) -> None:
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest.pop("upgraded_from", None)
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(Path(bundle_dir) / MANIFEST, manifest)


@contextlib.contextmanager
def bundle_transaction(bundle_dir: str | os.PathLike) -> Iterator[tuple[Bundle, Callable[[Path], Path]]]:
    """Lock a bundle for adding files. Yields (bundle, stage) where stage(final_path) gives a temp path to write;
    staged files are renamed into place and the manifest (as mutated in bundle.manifest) is written on success."""
    root = Path(bundle_dir)
    bundle = Bundle.load(root)
    with BundleLock(root):
        clean_stale(root, ".")
        bundle = Bundle.load(root)  # re-read under the lock
        staged: list[tuple[Path, Path]] = []

        def stage(final: Path) -> Path:
            final = Path(final)
            tmp = temp_name(final)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            staged.append((tmp, final))
            return tmp

        try:
            yield bundle, stage
        except BaseException:
            for tmp, _ in staged:
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
            raise
        for tmp, final in staged:
            if tmp.exists():
                os.replace(tmp, final)
        write_manifest(root, bundle.manifest)


def file_hashes(root: Path, relatives: list[str]) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in relatives}
