"""One exception hierarchy for everything weightvault raises.

Every error carries the ``path`` of the file it is about and, where one is involved, the ``tensor``
name, and its message names both, so a user reading one line knows which file, which tensor and
what is wrong. Leaf errors also inherit the builtin a caller would naturally catch
(``KeyError``, ``FileNotFoundError``, ``ValueError``, ``TypeError``).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "AliasError",
    "CheckpointDeletedError",
    "CheckpointExistsError",
    "CheckpointLockedError",
    "CheckpointNotFoundError",
    "CheckpointPolicyError",
    "CheckpointSaveError",
    "ChecksumMismatchError",
    "CorruptFileError",
    "DuplicateTensorError",
    "FormatNotFoundError",
    "HeaderTooLargeError",
    "InvalidHeaderError",
    "InvalidOffsetError",
    "MissingDependencyError",
    "ResourceLimitError",
    "ShapeMismatchError",
    "StorageError",
    "StrictRestoreError",
    "TensorNotFoundError",
    "TruncatedFileError",
    "UnexpectedReadError",
    "UnknownDtypeError",
    "UnsafePickleError",
    "UnsupportedObjectError",
    "UnsupportedOperationError",
    "WeightVaultError",
    "WeightVaultUserWarning",
]


class WeightVaultError(Exception):
    """Base of every weightvault error.

    Args:
        message: what is wrong, already formatted.
        path: the file or directory concerned.
        tensor: the tensor concerned, if any.
        hint: one line telling the user how to fix it (the CLI prints it as ``TIP``).

    >>> err = WeightVaultError("header too short", path="m.bin", tensor="fc.weight", hint="re-download it")
    >>> str(err), err.hint
    ("m.bin: tensor 'fc.weight': header too short", 're-download it')
    >>> try:
    ...     weightvault.open(tmp_path / "missing.pt")
    ... except WeightVaultError as exc:
    ...     print(type(exc).__name__)
    FormatNotFoundError
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        tensor: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.tensor = tensor
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}")
        if self.tensor is not None:
            parts.append(f"tensor {self.tensor!r}")
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps errors picklable across process pools (keyword-only args are not by default).
        return (_rebuild_error, (type(self), self.message, self.path, self.tensor, self.hint))


def _rebuild_error(
    cls: type[WeightVaultError], message: str, path: str | None, tensor: str | None, hint: str | None
) -> WeightVaultError:
    return cls(message, path=path, tensor=tensor, hint=hint)


class CorruptFileError(WeightVaultError, ValueError):
    """The file is not a valid instance of its format."""


class HeaderTooLargeError(CorruptFileError):
    """A header claims more bytes than the format allows or than the file holds."""


class InvalidHeaderError(CorruptFileError):
    """A header cannot be parsed (bad JSON, bad protobuf, missing fields)."""


class InvalidOffsetError(CorruptFileError):
    """Tensor byte ranges leave the file, overlap, leave holes, or disagree with shape x dtype."""


class TruncatedFileError(CorruptFileError):
    """The file ends before the data its header describes."""


class ChecksumMismatchError(CorruptFileError):
    """Stored bytes do not match the recorded checksum (bit rot, partial copy, tampering)."""


class DuplicateTensorError(CorruptFileError):
    """Two tensors carry the same name."""


class UnknownDtypeError(CorruptFileError):
    """A dtype code that this reader does not know."""


class UnsafePickleError(CorruptFileError):
    """A pickle asks for something outside the allowlist; nothing of it was executed."""


class AliasError(CorruptFileError):
    """A manifest alias points at a tensor that does not exist."""


class ResourceLimitError(CorruptFileError):
    """Reading would take more memory or nesting than a weight file can justify (a compression bomb,
    a fill or an assembled shape far larger than the stored bytes, JSON nested thousands deep).
    The hint says how to raise the limit for a trusted file."""


class UnexpectedReadError(CorruptFileError):
    """A reader met something in the file that none of its checks anticipated; the original
    exception is chained as ``__cause__`` (see :mod:`weightvault.abc.guard`)."""


class TensorNotFoundError(WeightVaultError, KeyError):
    """The requested tensor is not in the file."""


class CheckpointNotFoundError(WeightVaultError, FileNotFoundError):
    """No checkpoint (or no committed checkpoint) at the path."""


class CheckpointDeletedError(CheckpointNotFoundError):
    """A run's checkpoint was deleted by retention before it could be (fully) read."""


class CheckpointPolicyError(WeightVaultError, ValueError):
    """A run reopened with another retention policy than the stored one, or a save that lacks
    the metric its ``best=`` policy ranks by (either would make retention delete silently)."""


class CheckpointExistsError(WeightVaultError, FileExistsError):
    """The destination exists and overwriting was not allowed."""


class CheckpointLockedError(WeightVaultError, RuntimeError):
    """Another writer holds the lock of a checkpoint directory."""


class CheckpointSaveError(WeightVaultError, OSError):
    """Writing a checkpoint failed (disk full, file too large, I/O error); earlier ones are intact."""


class StorageError(WeightVaultError, OSError):
    """An object store (S3, GCS, ... through fsspec) failed or refused a request, after retries."""


class FormatNotFoundError(WeightVaultError, ValueError):
    """No registered format recognises the file."""


class MissingDependencyError(WeightVaultError, ImportError):
    """A format or adapter needs an optional package that is not installed."""


class UnsupportedObjectError(WeightVaultError, TypeError):
    """An object that the native tree spec cannot store (we never fall back to pickle)."""


class UnsupportedOperationError(WeightVaultError, ValueError):
    """The format or tensor does not support what was asked (e.g. writing a read-only format)."""


class ShapeMismatchError(WeightVaultError, ValueError):
    """A tensor's shape differs from the one the target expects."""


class StrictRestoreError(WeightVaultError, KeyError):
    """``strict=True`` restore: names missing in the checkpoint or unexpected in it.

    ``.report`` holds the full :class:`weightvault.checkpoint.restore.RestoreReport`.
    """

    report: Any


class WeightVaultUserWarning(UserWarning):
    """Something worth telling the user that is not an error."""
