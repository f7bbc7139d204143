"""The last line of the "our own errors" rule: no foreign exception leaves a reader.

Every reader validates what it reads and raises a :class:`~weightvault.errors.CorruptFileError`
subclass that says what is wrong. This module is the net below that: each hook a format overrides
(``Format.open``, ``FormatReader.keys/info/get/...``) is wrapped when the class is defined, so an
exception the format did not anticipate (a ``KeyError`` from a malformed header, a ``zlib.error``
from a third-party decoder, a ``MemoryError``) still reaches the caller as a weightvault error that
names the file and tensor, with the original chained as ``__cause__``. Such an error is an
:class:`UnexpectedReadError`: the fuzzer counts them apart, because each is a check a format lacks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from weightvault.errors import ResourceLimitError, UnexpectedReadError, WeightVaultError

__all__ = ["guard_format", "guard_reader", "translate"]

F = TypeVar("F", bound=Callable[..., Any])

#: FormatReader hooks that touch file data (``close`` is left alone: it must not mask the original)
READER_HOOKS = (
    "keys",
    "info",
    "get",
    "get_slice",
    "structure",
    "tree_spec",
    "checked_info",
    "verify",
    "byte_span",
    "read_jobs",
)
READER_PROPERTIES = ("metadata", "skipped")


def translate(exc: Exception, *, path: Any, tensor: str | None) -> WeightVaultError:
    """A weightvault error for an exception a reader let through."""
    if isinstance(exc, MemoryError):
        return ResourceLimitError(
            "reading needs more memory than is available; the file's sizes may be corrupt",
            path=path,
            tensor=tensor,
        )
    if isinstance(exc, RecursionError):  # a depth check the format lacks
        return UnexpectedReadError(
            "the file is nested too deeply to read", path=path, tensor=tensor
        )
    detail = str(exc) or type(exc).__name__
    return UnexpectedReadError(
        f"cannot be read ({type(exc).__name__}: {detail}); the file is malformed, or this is a "
        "weightvault bug (rerun with -v and report it if the file loads in its framework)",
        path=path,
        tensor=tensor,
    )


def _tensor_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    name = args[0] if args else kwargs.get("name")
    return name if isinstance(name, str) else None


def _guard_method(func: F) -> F:
    if getattr(func, "__wv_guarded__", False):
        return func

    @functools.wraps(func)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(self, *args, **kwargs)
        except WeightVaultError:
            raise
        except Exception as exc:
            raise translate(
                exc, path=getattr(self, "path", None), tensor=_tensor_arg(args, kwargs)
            ) from exc

    guarded.__wv_guarded__ = True  # type: ignore[attr-defined]
    return guarded  # type: ignore[return-value]


def guard_reader(cls: type) -> None:
    """Wrap the data hooks ``cls`` itself defines (called from ``__init_subclass__``)."""
    for name in READER_HOOKS:
        if callable(cls.__dict__.get(name)):
            setattr(cls, name, _guard_method(cls.__dict__[name]))
    for name in READER_PROPERTIES:
        prop = cls.__dict__.get(name)
        if isinstance(prop, property) and prop.fget is not None:
            setattr(cls, name, property(_guard_method(prop.fget), prop.fset, prop.fdel, prop.__doc__))


def guard_format(cls: type) -> None:
    """Wrap ``open`` of a Format class (a file that breaks the opener gets our error too),
    ``write`` (its options checked against the declaration, as ``open``'s are) and ``sniff`` (a
    detector that cannot make sense of a file says "not mine": detection goes on)."""
    _guard_sniff(cls)
    _guard_write(cls)
    raw = cls.__dict__.get("open")
    if not isinstance(raw, classmethod) or getattr(raw.__func__, "__wv_guarded__", False):
        return
    func = raw.__func__

    @functools.wraps(func)
    def guarded(klass: type, path: Any, *args: Any, **kwargs: Any) -> Any:
        _check_options(klass, kwargs, "read", path)
        try:
            return func(klass, path, *args, **kwargs)
        except WeightVaultError:
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            raise  # about the path the caller named, not about the file's content
        except Exception as exc:
            raise translate(exc, path=path, tensor=None) from exc

    guarded.__wv_guarded__ = True  # type: ignore[attr-defined]
    cls.open = classmethod(guarded)  # type: ignore[attr-defined]


def _check_options(klass: type, options: dict[str, Any], kind: str, path: Any) -> None:
    """Every open and write, however it is reached, refuses options the format does not declare
    (``weightvault.open`` checks first too; checking twice costs a set difference)."""
    from weightvault.registry import check_options

    check_options(klass, options, kind, path=path)  # type: ignore[arg-type]


def _guard_write(cls: type) -> None:
    raw = cls.__dict__.get("write")
    if not isinstance(raw, classmethod) or getattr(raw.__func__, "__wv_guarded__", False):
        return
    func = raw.__func__

    @functools.wraps(func)
    def checked(klass: type, path: Any, tensors: Any, *args: Any, **kwargs: Any) -> Any:
        options = {k: v for k, v in kwargs.items() if k != "metadata"}
        _check_options(klass, options, "write", path)
        return func(klass, path, tensors, *args, **kwargs)

    checked.__wv_guarded__ = True  # type: ignore[attr-defined]
    cls.write = classmethod(checked)  # type: ignore[attr-defined]


def _guard_sniff(cls: type) -> None:
    raw = cls.__dict__.get("sniff")
    if not isinstance(raw, classmethod) or getattr(raw.__func__, "__wv_guarded__", False):
        return
    func = raw.__func__

    @functools.wraps(func)
    def guarded(klass: type, path: Any, head: bytes) -> bool:
        try:
            return bool(func(klass, path, head))
        except WeightVaultError:
            return False
        except (OSError, ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError,
                UnicodeError, MemoryError):
            return False

    guarded.__wv_guarded__ = True  # type: ignore[attr-defined]
    cls.sniff = classmethod(guarded)  # type: ignore[attr-defined]
