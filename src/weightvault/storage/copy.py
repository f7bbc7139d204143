"""Server-side copies: an object duplicated inside the store, no byte of it sent by us.

An incremental save to an object store (:mod:`weightvault.storage.incremental`) takes each
unchanged shard of the previous step over with :func:`server_copy`:

* **S3**, up to :data:`COPY_OBJECT_MAX` (S3's 5 GiB limit of one ``CopyObject``): one
  ``CopyObject`` request, atomic like a PUT. Larger objects: a multipart upload whose parts are
  ``UploadPartCopy`` ranges of the source (:data:`COPY_PART_SIZE` each, several in flight),
  completed at the end and **aborted on any failure**, so nothing half-copied ever appears (s3fs's
  own ``copy`` does the same serially, switches at 150 MiB and leaves the upload behind when a
  part fails). Every request goes through the retry layer (``Location._retry``).
  ``if_match`` (the source's ETag, as read when its header was checked) is sent as
  ``CopySourceIfMatch``: a source replaced since the check makes the copy fail (412) instead of
  copying other bytes than those checked.
* **other fsspec filesystems**: their ``cp_file`` (GCS rewrites server-side; ``memory://``
  copies in memory), retried the same way.

A failed copy raises a :class:`~weightvault.errors.WeightVaultError` (``CheckpointNotFoundError``
when the source is gone); the caller decides to upload instead.
"""

from __future__ import annotations

from typing import Any

from weightvault.errors import StorageError
from weightvault.storage.location import Location
from weightvault.storage.reader import run_parallel
from weightvault.storage.upload import S3_MAX_PARTS, S3_MIN_PART

__all__ = ["COPY_OBJECT_MAX", "COPY_PART_SIZE", "server_copy"]

#: the largest object one CopyObject may copy (S3's limit); above it, UploadPartCopy parts
COPY_OBJECT_MAX = 5 << 30
#: the size of an UploadPartCopy part (S3 allows 5 MiB to 5 GiB); large parts: few requests,
#: and nothing is buffered here whatever their size
COPY_PART_SIZE = 512 << 20
#: S3's largest part
S3_MAX_PART = 5 << 30


def server_copy(src: Location, dst: Location, *, size: int, if_match: str | None = None) -> None:
    """Copy the object ``src`` (``size`` bytes) to ``dst`` inside the store (see the module doc)."""
    if not src.is_s3:
        _fs_copy(src, dst)
    elif size <= COPY_OBJECT_MAX:
        _copy_object(src, dst, if_match)
    else:
        _multipart_copy(src, dst, size, if_match)
    dst.invalidate()


def _fs_copy(src: Location, dst: Location) -> None:
    def op() -> None:
        src.fs.cp_file(src.path, dst.path)

    dst._retry(op, f"copying {src.url} (server-side)")


def _source(src: Location) -> dict[str, str]:
    bucket, key, _ = src.fs.split_path(src.path)
    return {"Bucket": bucket, "Key": key}


def _condition(if_match: str | None) -> dict[str, str]:
    return {"CopySourceIfMatch": if_match} if if_match else {}


def _copy_object(src: Location, dst: Location, if_match: str | None) -> None:
    bucket, key, _ = dst.fs.split_path(dst.path)

    def op() -> None:
        dst.fs.call_s3(
            "copy_object", Bucket=bucket, Key=key, CopySource=_source(src), **_condition(if_match)
        )

    dst._retry(op, f"copying {src.url} (server-side)")


def copy_ranges(size: int, part_size: int | None = None) -> list[tuple[int, int]]:
    """Inclusive byte ranges of the parts of a multipart copy of ``size`` bytes: at least
    :data:`COPY_PART_SIZE` (or ``part_size``) each, at most S3's part count and part size."""
    part = max(part_size or COPY_PART_SIZE, S3_MIN_PART, -(-size // S3_MAX_PARTS))
    if part > S3_MAX_PART:
        raise StorageError(f"an object of {size} bytes is beyond S3's copy limits")
    return [(lo, min(lo + part, size) - 1) for lo in range(0, size, part)]


def _multipart_copy(src: Location, dst: Location, size: int, if_match: str | None) -> None:
    fs = dst.fs
    bucket, key, _ = fs.split_path(dst.path)
    what = f"copying {src.url} (server-side, multipart)"

    def create() -> str:
        return str(fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"])

    upload_id = dst._retry(create, what)
    ranges = copy_ranges(size)
    etags: dict[int, str] = {}

    def part_job(number: int, lo: int, hi: int) -> Any:
        def op() -> str:
            out = fs.call_s3(
                "upload_part_copy", Bucket=bucket, Key=key, UploadId=upload_id,
                PartNumber=number, CopySource=_source(src), CopySourceRange=f"bytes={lo}-{hi}",
                **_condition(if_match),
            )  # fmt: skip
            return str(out["CopyPartResult"]["ETag"])

        def job() -> None:
            etags[number] = dst._retry(op, f"{what}: part {number}")

        return job

    try:
        jobs = [part_job(i, lo, hi) for i, (lo, hi) in enumerate(ranges, 1)]
        run_parallel(jobs, dst.transfer.concurrency)
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]

        def complete() -> None:
            fs.call_s3(
                "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )  # fmt: skip

        dst._retry(complete, what)
    except BaseException:
        _abort(dst, bucket, key, upload_id)
        raise


def _abort(dst: Location, bucket: str, key: str, upload_id: str) -> None:
    def op() -> None:
        dst.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)

    try:
        dst._retry(op, "aborting a multipart copy")
    except Exception:  # noqa: BLE001, S110 - the copy's own failure is what the caller must see
        pass  # the next writer aborts stale uploads of the run (storage.manager)
