"""The shard-directory layer: plan, write and read a directory of safetensors shards.

Three things in weightvault are "a directory of safetensors shards plus a few JSON files": a native
checkpoint directory (:mod:`weightvault.formats.native`), a Hugging Face sharded repository
(:mod:`weightvault.formats.safetensors`) and every step of a
:class:`~weightvault.checkpoint.manager.CheckpointManager` run. They share this module:

* :func:`plan_shards` decides which tensor goes into which shard file. The plan is plain data
  (:class:`ShardPlan`, in the spirit of huggingface_hub's ``StateDictSplit``): shard file ->
  tensor names and tensor name -> shard file. Tensors keep the caller's order; a shard is closed
  when the next tensor would take it over ``max_bytes``, so a tensor larger than ``max_bytes``
  gets a shard of its own. Tied tensors are stored once (:func:`split_ties`) and the others are
  recorded as aliases by the caller; a plan never holds a name twice.
* :func:`shard_directory` writes the directory: it is built under a temporary name
  (:func:`weightvault.core.io.atomic_dir`), shards first (:meth:`ShardDirectory.write_shards`),
  then the small files (:meth:`ShardDirectory.write_file`: manifest, index, the manager's record),
  then the marker (:meth:`ShardDirectory.commit`), after which nothing more may be written; every
  file is fsynced when ``fsync`` is set, then the directory, then it is renamed into place. A
  crash or an exception at any point leaves no directory under the final name and no marker.
* :func:`read_index` reads a manifest or index file: a regular file inside the directory (through
  :func:`weightvault.formats._common.safe_relative`, so ``..``, absolute names and symlinks that
  leave the directory are refused), at most ``max_bytes`` long, checked before it is read.
  :func:`resolve_shard` does the same for a shard file named inside an index or manifest.

Built to carry later work (none of it is implemented yet):

* **distributed saves**: a plan is a pure function of the tensor list and ``max_bytes``, so every
  rank can compute the same plan and write only its own shard files
  (:meth:`ShardDirectory.write_shards` takes any subset of the plan's shards); rank 0 then waits
  for the others, writes the manifest and, last, the marker. The marker stays the only thing a
  reader trusts, so a rank that dies leaves an uncommitted directory.
* **object storage**: there is no rename on S3-like stores. The same order applies with the
  marker as the commit point: write the data objects (shards), then the manifest, then
  ``COMMITTED``; readers already refuse a directory without the marker. The writer touches the
  filesystem only through :class:`ShardDirectory`, which is the piece to swap.
* **incremental checkpoints** (implemented, see docs/incremental.md): :func:`plan_incremental`
  plans a step against the previous one: a previous shard whose tensors are all unchanged keeps
  its exact tensor list and is hard-linked (:meth:`ShardDirectory.link_shard`) instead of
  written; the other tensors are packed anew, those that ever changed apart from those that
  did not, so a trained head or LoRA adapters interleaved with a frozen base end up in shards of
  their own after one step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from weightvault.core.dtypes import is_string_array
from weightvault.core.io import atomic_dir, create_file
from weightvault.core.safetensors_io import TensorDigest, TensorSource, write_safetensors
from weightvault.core.tensors import describe
from weightvault.errors import CheckpointNotFoundError, HeaderTooLargeError

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "SHARD_NAME",
    "BaseShard",
    "FlatState",
    "IncrementalPlan",
    "ShardDirectory",
    "ShardPlan",
    "plan_incremental",
    "plan_shards",
    "read_index",
    "resolve_shard",
    "shard_directory",
    "split_ties",
]

#: the largest shard of a native directory (``save``'s and the manager's ``shard_size``)
DEFAULT_SHARD_SIZE = 2 * 1024**3

#: shard file names, as transformers and huggingface_hub write them
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"


class _Sized(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def nbytes(self) -> int: ...


# -- ties --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlatState:
    """Training state taken apart once: the tree spec, every distinct tensor once (in the order
    found) and the tied names (``{name: the name it shares storage with}``)."""

    spec: dict[str, Any]
    tensors: dict[str, Any]
    aliases: dict[str, str] = field(default_factory=dict)


def split_ties(found: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``({name: tensor} for distinct tensors, {tied name: first name with the same storage})``.

    Two names are tied when they are the same tensor (storage, offset, shape, strides, dtype). String
    arrays are never tied (they are encoded per name)."""
    unique: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    first_by_identity: dict[tuple[Any, ...], str] = {}
    for name, obj in found.items():
        identity = None if is_string_array(obj) else describe(obj, name=name).identity
        if identity is not None:
            if identity in first_by_identity:
                aliases[name] = first_by_identity[identity]
                continue
            first_by_identity[identity] = name
        unique[name] = obj
    return unique, aliases


# -- plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    """Which tensor goes into which shard file, in write order. ``shards`` is the data; the
    mappings are views of it."""

    shards: tuple[tuple[str, tuple[str, ...]], ...]
    max_bytes: int
    total_bytes: int

    @property
    def filename_to_tensors(self) -> dict[str, list[str]]:
        return {file: list(names) for file, names in self.shards}

    @property
    def tensor_to_filename(self) -> dict[str, str]:
        return {name: file for file, names in self.shards for name in names}

    @property
    def files(self) -> list[str]:
        return [file for file, _ in self.shards]

    @property
    def is_sharded(self) -> bool:
        return len(self.shards) > 1


def plan_shards(sources: Sequence[_Sized], max_bytes: int, *, pattern: str = SHARD_NAME) -> ShardPlan:
    """Group ``sources`` (anything with ``name`` and ``nbytes``) into shards of at most
    ``max_bytes`` data bytes, keeping their order; a tensor larger than that gets a shard alone.
    No sources give one empty shard (a checkpoint of nothing is still a valid directory);
    ``max_bytes`` under 1 gives every tensor with data a shard of its own."""
    _check_unique(sources)
    groups = _pack(sources, max_bytes) or [[]]
    return _named_plan(groups, pattern, max_bytes, sum(src.nbytes for src in sources))


def _check_unique(sources: Sequence[_Sized]) -> None:
    seen: set[str] = set()
    for src in sources:
        if src.name in seen:
            raise ValueError(f"tensor {src.name!r} is planned twice (record ties as aliases)")
        seen.add(src.name)


def _pack(sources: Sequence[_Sized], max_bytes: int) -> list[list[str]]:
    """Consecutive groups of at most ``max_bytes`` (a larger tensor alone); none for no sources."""
    groups: list[list[str]] = []
    size = 0
    for src in sources:
        if not groups or (groups[-1] and size + src.nbytes > max_bytes):
            groups.append([])
            size = 0
        groups[-1].append(src.name)
        size += src.nbytes
    return groups


def _named_plan(groups: list[list[str]], pattern: str, max_bytes: int, total: int) -> ShardPlan:
    count = len(groups)
    shards = tuple(
        (pattern.format(index=i, count=count), tuple(names)) for i, names in enumerate(groups, 1)
    )
    return ShardPlan(shards, max_bytes, total)


@dataclass(frozen=True)
class BaseShard:
    """A shard of the previous checkpoint: its file, its tensors, and whether it holds tensors
    that changed at some earlier step (``volatile``: they are packed apart from frozen ones)."""

    file: str
    tensors: tuple[str, ...]
    volatile: bool = False


@dataclass(frozen=True)
class IncrementalPlan:
    """A plan whose ``reused`` shards (new file -> previous file) are taken over unchanged;
    ``volatile`` lists the new files packed from tensors that changed at some step."""

    plan: ShardPlan
    reused: dict[str, str]
    volatile: frozenset[str]


def plan_incremental(
    sources: Sequence[_Sized],
    max_bytes: int,
    *,
    base: Sequence[BaseShard] | None,
    unchanged: Callable[[str], bool],
    pattern: str = SHARD_NAME,
) -> IncrementalPlan:
    """Plan a step against the previous step's shards ``base`` (None: there is none).

    A base shard is reused as it is when every tensor in it is still saved and ``unchanged``
    (same dtype, shape and checksum). The remaining tensors are packed like :func:`plan_shards`
    in two streams, so that a shard never mixes them: *volatile* ones (they changed now, are new
    since the base, or sat in a volatile base shard: once volatile, always volatile, so a tensor
    that changes every other step does not churn the layout) and *stable* ones (unchanged, but
    their base shard was broken up by a changed neighbour; they are written once more and reused
    from then on). Shards are ordered by their first tensor's position in ``sources`` and named
    by ``pattern``; when the set of shards stays the same, so do their names."""
    _check_unique(sources)
    total = sum(src.nbytes for src in sources)
    if base is None:
        groups = _pack(sources, max_bytes) or [[]]
        return IncrementalPlan(_named_plan(groups, pattern, max_bytes, total), {}, frozenset())
    present = {src.name for src in sources}
    kept = [b for b in base if b.tensors and all(n in present and unchanged(n) for n in b.tensors)]
    taken = {n for b in kept for n in b.tensors}
    was_volatile = {n for b in base if b.volatile for n in b.tensors}
    stable, volatile = [], []
    for src in sources:
        if src.name in taken:
            continue
        moving = not unchanged(src.name) or src.name in was_volatile
        (volatile if moving else stable).append(src)
    position = {src.name: i for i, src in enumerate(sources)}
    # (first tensor's position, tensors, base file reused or None, volatile)
    parts: list[tuple[int, list[str], str | None, bool]] = [
        (min(position[n] for n in b.tensors), list(b.tensors), b.file, b.volatile) for b in kept
    ]
    parts += [(position[g[0]], g, None, False) for g in _pack(stable, max_bytes)]
    parts += [(position[g[0]], g, None, True) for g in _pack(volatile, max_bytes)]
    parts.sort(key=lambda part: part[0])
    if not parts:
        parts = [(0, [], None, False)]
    plan = _named_plan([names for _, names, _, _ in parts], pattern, max_bytes, total)
    named = list(zip(plan.files, parts, strict=True))
    reused = {file: part[2] for file, part in named if part[2] is not None}
    moving_files = frozenset(file for file, part in named if part[3])
    return IncrementalPlan(plan, reused, moving_files)


# -- write -------------------------------------------------------------------------------------------


class ShardDirectory:
    """A shard directory being built under its temporary name (see :func:`shard_directory`)."""

    def __init__(self, root: Path, fsync: bool) -> None:
        self.root = root
        self.fsync = fsync
        self.written: list[str] = []  # file names in the order written (or linked)
        self.nbytes = 0  # bytes of every file so far (the checkpoint's logical size)
        self.new_nbytes = 0  # of those, bytes really written (a hard link writes none)
        self.marker: str | None = None

    def write_shards(
        self,
        sources: Sequence[TensorSource],
        plan: ShardPlan,
        *,
        metadata: Callable[[str], dict[str, str]],
        on_tensor: Callable[[TensorSource], TensorDigest] | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        """Write the plan's shard files (``only``: just these, e.g. one rank's), each with the
        safetensors ``__metadata__`` that ``metadata(file)`` returns."""
        by_name = {src.name: src for src in sources}
        for file, names in plan.shards:
            if only is not None and file not in only:
                continue
            self._check_open(file)
            with create_file(self.root / file, durable=self.fsync) as f:
                write_safetensors(f, [by_name[n] for n in names], metadata(file), on_tensor=on_tensor)
                self._finish(f, file)

    def link_shard(self, name: str, source: str | os.PathLike[str]) -> str:
        """Put the committed file ``source`` (a shard of an earlier checkpoint) here as ``name``
        without writing its bytes: a hard link where the filesystem allows one, else a reflink
        (FICLONE: shared blocks, copy on write), else a plain copy. Returns ``"link"``,
        ``"reflink"`` or ``"copy"``. Either way the new directory holds a complete file that
        deleting the source's directory never breaks, and nothing ever writes into a shard
        after its directory is committed, so sharing the inode is safe."""
        self._check_open(name)
        target = self.root / name
        try:
            os.link(source, target)
            how = "link"
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            how = _clone_or_copy(source, target, self.fsync)
        size = os.stat(target).st_size
        self.nbytes += size
        if how == "copy":
            self.new_nbytes += size
        self.written.append(name)
        return how

    def write_file(self, name: str, data: bytes) -> None:
        """Write one small file (manifest, index, record); never after the marker."""
        self._check_open(name)
        with open(self.root / name, "xb") as f:
            f.write(data)
            self._finish(f, name)

    def commit(self, marker: str, data: bytes) -> None:
        """Write the marker, last: a directory without it is never read as a checkpoint."""
        self.write_file(marker, data)
        self.marker = marker

    def _check_open(self, name: str) -> None:
        if self.marker is not None:
            raise RuntimeError(f"{name}: the directory is already committed by {self.marker}")

    def _finish(self, f: Any, name: str) -> None:
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())
        size = os.fstat(f.fileno()).st_size
        self.nbytes += size
        self.new_nbytes += size
        self.written.append(name)


#: errors of os.link that mean "not here" (other filesystem, links refused, too many links)
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}
_FICLONE = 0x40049409  # <linux/fs.h>: _IOW(0x94, 9, int)


def _clone_or_copy(source: str | os.PathLike[str], target: Path, fsync: bool) -> str:
    """Reflink ``source`` to ``target`` where the filesystem can (btrfs, XFS), else copy it."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            how = "reflink"
        except OSError:
            shutil.copyfileobj(src, dst, 4 << 20)
            how = "copy"
        dst.flush()
        if fsync:
            os.fsync(dst.fileno())
    return how


@contextlib.contextmanager
def shard_directory(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[ShardDirectory]:
    """Build a shard directory at ``path``: under a temporary name until the block ends without an
    error, then renamed into place (replacing an old directory only once the new one is whole).
    An error leaves nothing under ``path`` and removes the temporary directory."""
    with atomic_dir(path, fsync=fsync) as tmp:
        yield ShardDirectory(tmp, fsync)


# -- read --------------------------------------------------------------------------------------------


def read_index(
    root: str | os.PathLike[str],
    name: str,
    *,
    max_bytes: int,
    what: str | None = None,
    link_homes: tuple[str, ...] = (),
) -> bytes:
    """The bytes of ``name`` (a manifest or index) inside ``root``: a regular file that stays in the
    directory, refused before reading when over ``max_bytes``. ``what`` names it in the size
    error (default: its file name)."""
    from weightvault.formats._common import safe_relative  # formats import core, not the reverse

    full = Path(safe_relative(root, name, path=Path(root) / name, link_homes=link_homes))
    try:
        size = full.stat().st_size
        if size > max_bytes:
            raise HeaderTooLargeError(
                f"{what or name} is {size} bytes, over the {max_bytes} cap", path=full
            )
        return full.read_bytes()
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"no {name}", path=root) from None


def resolve_shard(
    root: str | os.PathLike[str], file: str, *, path: str | os.PathLike[str], tensor: str | None
) -> str:
    """Where shard ``file`` named in an index lies: inside ``root`` (links included), a file."""
    from weightvault.formats._common import safe_relative

    full = safe_relative(root, file, path=path, tensor=tensor)
    if not os.path.isfile(full):
        raise CheckpointNotFoundError(f"shard {file} is missing", path=path, tensor=tensor)
    return full
