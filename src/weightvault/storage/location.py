"""Where a checkpoint lives when it is not on a local disk: an fsspec URL, resolved once.

``s3://bucket/key``, ``gs://...``, ``memory://...`` and every other fsspec protocol become a
:class:`Location` (filesystem + path + the transfer settings); ``file://...`` and plain paths are
left to the local code, which stays exactly as fast as before (:func:`local_path` turns a
``file://`` URL into the plain path).

Every request goes through :func:`retrying`: throttling (503 SlowDown), 5xx answers, timeouts and
dropped connections are retried with exponential backoff and jitter; what still fails after the
last attempt, or fails for a reason a retry cannot fix (no such object, access denied), becomes a
:class:`~weightvault.errors.StorageError` / :class:`~weightvault.errors.CheckpointNotFoundError`
naming the URL.
"""

from __future__ import annotations

import errno
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from weightvault.errors import (
    CheckpointNotFoundError,
    MissingDependencyError,
    StorageError,
    WeightVaultError,
)

__all__ = [
    "Location",
    "Transfer",
    "entry_time",
    "is_url",
    "local_path",
    "resolve",
    "retrying",
    "stats",
]

T = TypeVar("T")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

#: protocol -> (package, what to install), for the error a missing filesystem gets
_EXTRAS = {
    "s3": ("s3fs", "pip install 'weightvault[s3]'"),
    "s3a": ("s3fs", "pip install 'weightvault[s3]'"),
    "gs": ("gcsfs", "pip install 'weightvault[gcs]'"),
    "gcs": ("gcsfs", "pip install 'weightvault[gcs]'"),
    "az": ("adlfs", "pip install adlfs"),
    "abfs": ("adlfs", "pip install adlfs"),
    "abfss": ("adlfs", "pip install adlfs"),
    "hf": ("huggingface_hub", "pip install huggingface_hub"),
}

#: storage_options keys that are ours (transfer settings), not the filesystem's
TRANSFER_KEYS = ("part_size", "concurrency", "max_retries", "retry_delay", "single_put_size")

MiB = 1 << 20


@dataclass(frozen=True)
class Transfer:
    """How data moves: parts of ``part_size`` bytes, ``concurrency`` requests in flight (so an
    upload holds at most ``concurrency x part_size`` bytes of buffers), ``retries`` further
    attempts per request after the first (storage option ``max_retries``), backoff starting at
    ``retry_delay`` seconds."""

    part_size: int = 16 * MiB
    concurrency: int = 8
    retries: int = 6
    retry_delay: float = 0.1
    #: an object up to this size (and within the upload's buffer budget) is one PUT, not a
    #: multipart upload: a third of the requests, and no server-side assembly of parts (s3fs's
    #: ``put_file`` draws the line at 100 MiB too)
    single_put_size: int = 100 * MiB

    def __post_init__(self) -> None:
        # S3 refuses parts under 5 MiB (except the last); smaller ones are allowed for tests of
        # other stores, but never zero.
        if self.part_size < 1 or self.concurrency < 1 or self.retries < 0 or self.single_put_size < 0:
            raise ValueError(
                "part_size and concurrency must be >= 1, retries and single_put_size >= 0, got "
                f"{self.part_size}, {self.concurrency}, {self.retries}, {self.single_put_size}"
            )


class _Stats:
    """Bytes read and written through :class:`Location` (for tests and the benchmark)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.bytes_read = 0
            self.read_requests = 0
            self.bytes_written = 0

    def add_read(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n
            self.read_requests += 1

    def add_written(self, n: int) -> None:
        with self._lock:
            self.bytes_written += n


stats = _Stats()


def is_url(path: Any) -> bool:
    """True for a URL of a non-local filesystem (``s3://``, ``memory://`` ...); False for plain
    paths and ``file://`` URLs, which the local code handles."""
    if isinstance(path, Location):
        return True
    if not isinstance(path, str):
        return False
    m = _SCHEME.match(path)
    return m is not None and m.group(1).lower() not in ("file", "local")


def local_path(path: Any) -> Any:
    """A ``file://`` URL as the plain path it names; anything else unchanged."""
    if isinstance(path, str):
        m = _SCHEME.match(path)
        if m is not None and m.group(1).lower() in ("file", "local"):
            return path[m.end() :] or "/"
    return path


def split_options(
    storage_options: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], Transfer]:
    """The filesystem's options and our transfer settings out of one ``storage_options``."""
    opts = dict(storage_options or {})
    mine = {k: opts.pop(k) for k in TRANSFER_KEYS if k in opts}
    if "max_retries" in mine:
        mine["retries"] = mine.pop("max_retries")
    try:
        transfer = Transfer(
            **{k: (float(v) if k == "retry_delay" else int(v)) for k, v in mine.items()}
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"storage option: {exc}") from None
    return opts, transfer


def _filesystem_class(protocol: str, url: str) -> Any:
    package, install = _EXTRAS.get(protocol, (None, None))
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(
            f"{protocol}:// URLs need fsspec{' and ' + package if package else ''}, "
            "which are not installed",
            path=url,
            hint=install or "pip install fsspec",
        ) from None
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{protocol}:// URLs need {package or 'an fsspec filesystem package'}, which is not "
            f"installed ({exc})",
            path=url,
            hint=install or f"install the fsspec implementation of {protocol}://",
        ) from None
    except ValueError:
        raise StorageError(f"no fsspec filesystem knows {protocol}://", path=url) from None


def resolve(
    url: str | Location,
    storage_options: Mapping[str, Any] | None = None,
    transfer: Transfer | None = None,
) -> Location:
    """The :class:`Location` of ``url``: the fsspec filesystem (its package imported now, so a
    missing one is reported here with the extra to install) and the path within it."""
    if isinstance(url, Location):
        return url
    m = _SCHEME.match(url)
    if m is None:
        raise ValueError(f"not a URL: {url!r}")
    protocol = m.group(1).lower()
    fs_options, parsed = split_options(storage_options)
    cls = _filesystem_class(protocol, url)
    if protocol in ("s3", "s3a"):
        fs_options = _s3_defaults(fs_options)
    try:
        fs = cls(**cls._get_kwargs_from_urls(url), **fs_options)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"bad storage options for {protocol}://: {exc}", path=url) from None
    if protocol in ("s3", "s3a") and hasattr(fs, "retries"):
        fs.retries = S3FS_ATTEMPTS  # s3fs's own retry wrapper (a class attribute, not an option)
    path = cls._strip_protocol(url)
    return Location(fs, path.rstrip("/"), url.rstrip("/"), transfer or parsed, protocol)


#: attempts s3fs's own wrapper makes per call (its default is 5); ours retry around it
S3FS_ATTEMPTS = 2


def _s3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """No retries inside botocore and fewer inside s3fs (unless the user set them): ours, around
    each request, back off and are counted in one place; three nested layers would multiply the
    attempts (5 x 5 x ours) and their backoffs, turning a dead endpoint into minutes of waiting."""
    out = dict(options)
    config = dict(out.get("config_kwargs") or {})
    config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
    out["config_kwargs"] = config
    return out


# -- retries ---------------------------------------------------------------------------------------

#: errno values of OSErrors a retry cannot fix (s3fs maps 412/416/400 answers to EINVAL)
_PERMANENT_ERRNO = {errno.EINVAL, errno.ENOSYS, errno.EACCES, errno.EPERM, errno.ENOENT}
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    WeightVaultError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    MemoryError,
)
_TRANSIENT_WORDS = (
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttl",
    "reduce your request rate",
    "Connection",
    "connection",
    "Disconnected",
    "timed out",
    "Timeout",
    "IncompleteRead",
    "Payload",
    "503",
    "500",
    "502",
    "504",
)


def is_transient(exc: BaseException) -> bool:
    """Would the same request plausibly succeed if sent again?"""
    if not isinstance(exc, Exception) or isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNO:
        return False
    module = type(exc).__module__.split(".", 1)[0]
    if isinstance(exc, OSError) or module in ("aiohttp", "botocore", "aiobotocore", "urllib3"):
        text = f"{type(exc).__name__} {exc}"
        return isinstance(exc, OSError) and exc.errno is None or any(
            w in text for w in _TRANSIENT_WORDS
        )
    return False


def retrying(
    op: Callable[[], T],
    *,
    what: str,
    url: str,
    transfer: Transfer,
    passthrough: tuple[type[BaseException], ...] = (),
) -> T:
    """Run ``op`` (one request), retrying transient failures with exponential backoff + jitter.

    Exceptions in ``passthrough`` reach the caller as they are (a conditional write's
    ``FileExistsError``); others become weightvault errors naming ``url`` and ``what`` failed.
    """
    delay = transfer.retry_delay
    attempt = 0
    while True:
        try:
            return op()
        except passthrough:
            raise
        except Exception as exc:
            if attempt < transfer.retries and is_transient(exc):
                attempt += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            raise _as_error(exc, what, url, attempt) from exc


def _as_error(exc: Exception, what: str, url: str, attempt: int) -> Exception:
    if isinstance(exc, WeightVaultError):
        return exc
    tried = f" (after {attempt + 1} attempts)" if attempt else ""
    if isinstance(exc, FileNotFoundError):
        return CheckpointNotFoundError(f"{what}: no such object", path=url)
    return StorageError(f"{what} failed{tried}: {type(exc).__name__}: {exc}", path=url)


# -- the location ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A path on an fsspec filesystem plus how to move data there."""

    fs: Any
    path: str
    url: str
    transfer: Transfer = field(default_factory=Transfer)
    protocol: str = ""

    def __fspath__(self) -> str:  # error messages and os.fspath() name the URL
        return self.url

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_s3(self) -> bool:
        return hasattr(self.fs, "call_s3") and hasattr(self.fs, "split_path")

    def child(self, name: str) -> Location:
        return replace(self, path=f"{self.path}/{name}", url=f"{self.url}/{name}")

    def __truediv__(self, name: str) -> Location:  # run / "step-00000100", like a Path
        return self.child(name)

    @property
    def parent(self) -> Location:
        path, url = self.path.rsplit("/", 1)[0], self.url.rsplit("/", 1)[0]
        return replace(self, path=path, url=url)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Prefixes exist by having objects under them: nothing to create."""

    def unlink(self, missing_ok: bool = False) -> None:
        self.delete()

    def _retry(self, op: Callable[[], T], what: str, **kw: Any) -> T:
        return retrying(op, what=what, url=self.url, transfer=self.transfer, **kw)

    # -- metadata ----------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached listings (s3fs caches them; a checkpoint dir changes under us)."""
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(self.path)

    def info(self) -> dict[str, Any] | None:
        """The object's (or prefix's) info, None if nothing is there."""
        self.invalidate()

        def op() -> dict[str, Any] | None:
            try:
                return self.fs.info(self.path)
            except FileNotFoundError:
                return None

        return self._retry(op, "looking up")

    def exists(self) -> bool:
        return self.info() is not None

    def is_dir(self) -> bool:
        info = self.info()
        return info is not None and info.get("type") == "directory"

    def is_file(self) -> bool:
        info = self.info()
        return info is not None and info.get("type") != "directory"

    def size(self) -> int:
        info = self.info()
        if info is None:
            raise CheckpointNotFoundError("no such object", path=self.url)
        return int(info.get("size") or 0)

    def listdir(self) -> list[dict[str, Any]]:
        """Entries directly under this prefix (``name`` is the base name), [] if none."""
        self.invalidate()

        def op() -> list[dict[str, Any]]:
            try:
                found = self.fs.ls(self.path, detail=True)
            except FileNotFoundError:
                return []
            out = []
            for entry in found:
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                if entry["name"].rstrip("/") == self.path.rstrip("/"):
                    continue  # some filesystems list the prefix itself
                out.append({**entry, "base": name})
            return out

        return self._retry(op, "listing")

    # -- data --------------------------------------------------------------------------------------
    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` with one ranged GET (retried)."""
        if end <= start:
            return b""

        def op() -> bytes:
            data = self.fs.cat_file(self.path, start=start, end=end)
            if len(data) != end - start:
                # a connection cut mid-body can end a read early: that is worth a retry
                raise ConnectionError(f"short read: {len(data)} of {end - start} bytes")
            return data

        data = self._retry(op, f"reading bytes {start}-{end}")
        stats.add_read(len(data))
        return data

    def read_into(self, start: int, out: memoryview) -> None:
        """Fill ``out`` from byte ``start`` on."""
        out[:] = self.read_range(start, start + len(out))

    def read_all(self, limit: int | None = None) -> bytes:
        """The whole object (refused beyond ``limit`` bytes, checked before reading)."""
        size = self.size()
        if limit is not None and size > limit:
            from weightvault.errors import HeaderTooLargeError

            raise HeaderTooLargeError(f"{size} bytes, over the {limit} cap", path=self.url)
        return self.read_range(0, size)

    def write_bytes(self, data: bytes, *, exclusive: bool = False) -> None:
        """One object from ``data`` (a single PUT). ``exclusive``: fail with FileExistsError if
        the object exists (``If-None-Match: *`` on S3; check-then-write elsewhere)."""

        def op() -> None:
            if self.is_s3:
                bucket, key, _ = self.fs.split_path(self.path)
                extra = {"IfNoneMatch": "*"} if exclusive else {}
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **extra)
                self.fs.invalidate_cache(self.path)
            else:
                if exclusive and self.fs.exists(self.path):
                    raise FileExistsError(self.path)
                self.fs.pipe_file(self.path, data)

        self._retry(op, "writing", passthrough=(FileExistsError,))
        stats.add_written(len(data))

    def delete(self) -> None:
        """Remove the object if it is there."""

        def op() -> None:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass

        self._retry(op, "deleting")
        self.invalidate()

    def delete_many(self, locations: list[Location]) -> None:
        """Remove several objects (one batched request where the filesystem can)."""
        if not locations:
            return
        paths = [loc.path for loc in locations]

        def op() -> None:
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                pass

        self._retry(op, "deleting")
        self.invalidate()

    def modified(self) -> float | None:
        """Last-modified time (seconds since the epoch) if the store reports one."""
        info = self.info()
        return None if info is None else entry_time(info)


def env_storage_options() -> dict[str, Any]:
    """Storage options from ``WEIGHTVAULT_STORAGE_OPTIONS`` (JSON), for processes that cannot
    pass them (the ordinary ``AWS_*`` / ``FSSPEC_*`` variables are read by the filesystems)."""
    raw = os.environ.get("WEIGHTVAULT_STORAGE_OPTIONS")
    if not raw:
        return {}
    import json

    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"WEIGHTVAULT_STORAGE_OPTIONS is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("WEIGHTVAULT_STORAGE_OPTIONS must be a JSON object")
    return value


def entry_time(info: Mapping[str, Any]) -> float | None:
    """Last-modified time (seconds since the epoch) of a listing or ``info()`` entry, in
    whichever key the filesystem reports it (S3 ``LastModified``, local ``mtime``, ...)."""
    value = info.get("LastModified") or info.get("mtime") or info.get("created")
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
