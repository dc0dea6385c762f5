"""Atomic bundle writes: a lock file per bundle, temp names swapped in by rename, the manifest replaced last.

A new bundle is staged in a temp dir beside the target and swapped in with one renameat2(RENAME_EXCHANGE); a new
variant or engine is written under a temp name, renamed, then the manifest is replaced (temp + rename) — all under
the lock, so a second writer gets a clear error. A killed writer leaves the previous bundle intact; its temporary
litter is removed by the next writer.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .bundle import Bundle
from .errors import UserError
from .manifest import FORMAT_VERSION, MANIFEST
from .paths import sha256_file

_TMP_MARK = ".tmp-"


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
