"""Distributed saves to an object store: every rank uploads its own chunks into the step prefix.

:func:`weightvault.frameworks.torch_distributed.save_distributed` runs the same steps for a URL
as for a local directory; only where the files go differs, and that is this module:

* :class:`PrefixTarget` (rank 0) clears the prefix before any rank uploads (``COMMITTED`` first,
  :func:`~weightvault.storage.native.delete_checkpoint`), then the go-ahead is broadcast. There
  is no temporary name: an object store has no rename, so the ranks upload straight into the
  final prefix and ``COMMITTED``, written last by rank 0, is the commit. If the save fails on
  rank 0's side, rank 0 removes what is there (best effort; a rank still uploading after a peer
  died may add objects afterwards: they stay uncommitted, and the next save to the prefix, or the
  manager's leftover cleanup, removes them).
* :class:`PrefixDirectory` is what each rank writes its shard objects through: streamed
  multipart uploads (:func:`~weightvault.storage.upload.open_writer`, one
  :class:`~weightvault.storage.upload.UploadBudget` per rank, so ``concurrency x part_size``
  bounds a rank's buffers), all completed before the rank reports its chunk list; rank 0 then
  writes ``manifest.json``, the index, the manager's record and ``COMMITTED`` with it.
* **incremental** (``CheckpointManager(url, incremental=True, process_group=...)``): each rank
  plans its files against the base step as on a local disk
  (:func:`~weightvault.formats.distributed_incremental.write_rank_incremental`), and
  :meth:`PrefixDirectory.reuse_shards` has the store copy each of its unchanged files from the
  base prefix into the new one (:func:`~weightvault.storage.incremental.copy_shards`: header
  checked with a ranged GET, ``CopyObject`` on condition of the ETag read); no byte of them is
  uploaded. A file that cannot be copied is uploaded instead.

Each rank resolves the URL with its own ``storage_options`` (credentials never travel through the
process group); rank 0 broadcasts the URL it clears and every rank checks it names the same prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from weightvault.errors import CheckpointSaveError, UnsupportedOperationError
from weightvault.storage.location import Location

__all__ = ["PrefixDirectory", "PrefixTarget"]


class PrefixTarget:
    """Where a distributed save to ``loc`` writes (see the module doc)."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.path = loc  # what errors name (``os.fspath`` of a Location is its URL)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Location]:
        """Rank 0, before any rank uploads: an empty prefix. An error inside the block removes
        what was written (``COMMITTED`` first, so never a committed partial)."""
        from weightvault.storage.native import delete_checkpoint

        if self.loc.is_file():
            raise UnsupportedOperationError(
                "an object (not a checkpoint prefix) is in the way", path=self.loc.url
            )
        if self.loc.listdir():
            delete_checkpoint(self.loc)  # COMMITTED first: never a committed mix of old and new
        try:
            yield self.loc
        except BaseException:
            with contextlib.suppress(Exception):  # the save's own error is the one to report
                delete_checkpoint(self.loc)
            raise

    def at(self, where: str) -> Location:
        """The other ranks: the prefix rank 0 announced, which must be this rank's own URL."""
        if where != self.loc.url:
            raise CheckpointSaveError(
                f"rank 0 saves to {where}, this rank was given {self.loc.url}",
                path=self.loc.url,
                hint="call the save with the same URL on every rank",
            )
        return self.loc

    def size(self, where: Location, files: Sequence[str]) -> int:
        """Bytes of the ranks' uploaded shard objects (rank 0, before the manifest)."""
        return sum(where.child(f).size() for f in files)


class PrefixDirectory:
    """One rank's uploads into a checkpoint prefix: the interface of
    :class:`~weightvault.core.shards.ShardDirectory` that a distributed save uses."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.written: list[str] = []
        self.nbytes = 0  # bytes of every object so far (the checkpoint's logical size)
        self.new_nbytes = 0  # of those, bytes uploaded (a server-side copy sends none)
        self.sizes: dict[str, int] = {}
        self.marker: str | None = None

    def write_shards(
        self,
        sources: Sequence[Any],
        plan: Any,
        *,
        metadata: Callable[[str], Mapping[str, str]],
        on_tensor: Callable[[Any], Any] | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        """Upload the plan's shard objects, each a streamed multipart upload; the next shard
        starts while the last parts of the one before are in flight. Returns once every upload
        has completed (the objects exist); on an error every upload of this call is aborted."""
        from weightvault.core.safetensors_io import write_safetensors
        from weightvault.storage.upload import UploadBudget, open_writer

        by_name = {src.name: src for src in sources}
        pending: list[Any] = []
        budget = UploadBudget(self.loc.transfer) if self.loc.is_s3 else None
        try:
            for file, names in plan.shards:
                if only is not None and file not in only:
                    continue
                self._check_open(file)
                f = open_writer(self.loc.child(file), budget=budget)
                try:
                    group = [by_name[n] for n in names]
                    write_safetensors(f, group, dict(metadata(file)), on_tensor=on_tensor)
                    size = f.tell()
                    f.send_rest()
                except BaseException:
                    f.abort()
                    raise
                pending.append(f)
                self._add(file, size, uploaded=True)
            for f in pending:
                f.complete()
        except BaseException:
            for f in pending:
                f.abort()
            raise
        finally:
            if budget is not None:
                budget.close()

    def write_file(self, name: str, data: bytes) -> None:
        """One small object (manifest, index, record); never after the marker."""
        self._check_open(name)
        self.loc.child(name).write_bytes(data)
        self._add(name, len(data), uploaded=True)

    def reuse_shards(
        self,
        base: Any,
        reused: Mapping[str, str],
        names_of: Callable[[str], tuple[str, ...]],
        by_name: Mapping[str, Any],
    ) -> dict[str, dict[str, Any]]:
        """Copy each ``reused`` file of the base prefix (new file -> base file) into this prefix
        server-side, after checking its header holds ``names_of(file)`` as planned; the
        ``"incremental"`` entries (``how`` "copy", ``written_bytes`` 0) of those copied. The
        others are left out: the caller uploads them. (A local directory links instead:
        :class:`~weightvault.formats.distributed_incremental.LinkingDirectory`.)"""
        from weightvault.storage.incremental import copy_shards

        for file in reused:
            self._check_open(file)
        entries = copy_shards(self.loc, base, reused, names_of, by_name)
        for file, entry in entries.items():
            self._add(file, entry["nbytes"], uploaded=False)
        return entries

    def file_size(self, file: str) -> int:
        """The size of an object this directory put into the prefix."""
        return self.sizes[file]

    def _add(self, name: str, size: int, *, uploaded: bool) -> None:
        self.nbytes += size
        self.new_nbytes += size if uploaded else 0
        self.sizes[name] = size
        self.written.append(name)

    def commit(self, marker: str, data: bytes) -> None:
        """The marker, last: a prefix without it is never read as a checkpoint."""
        self.write_file(marker, data)
        self.marker = marker

    def _check_open(self, name: str) -> None:
        if self.marker is not None:
            raise RuntimeError(f"{name}: the prefix is already committed by {self.marker}")


def open_checkpoint(url: Any, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A ranged reader of the native checkpoint at ``url`` (what ``load_distributed`` reads a URL
    with: each rank fetches only the byte ranges of the chunks that overlap its shards)."""
    from weightvault.storage import location
    from weightvault.storage.reader import RemoteNativeReader

    return RemoteNativeReader(location(url, storage_options), single=None)
