"""The CLI's one error boundary: any exception escaping a command is one ERROR line, no traceback.

In-process tests make a real reader raise each foreign exception a damaged file can provoke; the
subprocess tests run the real entry point (with the same patch applied in the child, or a really
damaged file) and check what a user sees on the terminal and the exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import TruncatedFileError
from weightvault.formats.native import NativeReader

# (expression building the exception, a word the ERROR line must contain)
FOREIGN = {
    "KeyError": ("KeyError('model_weights')", "KeyError: 'model_weights'"),
    "RecursionError": ("RecursionError('maximum recursion depth exceeded')", "nested too deeply"),
    "MemoryError": ("MemoryError()", "ran out of memory"),
    "BadZipFile": ("zipfile.BadZipFile('Bad magic number for file header')", "zipfile.BadZipFile: Bad magic"),
    "zlib.error": ("zlib.error('Error -3 while decompressing data: invalid stored block lengths')", "zlib.error: Error -3"),
    "OverflowError": ("OverflowError('cannot fit int into an index-sized integer')", "OverflowError: cannot fit"),
    "h5py RuntimeError": ("RuntimeError('Unable to synchronously get info (bad symbol table)')", "RuntimeError: Unable to"),
}


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return weightvault.save({"w": np.arange(6, dtype=np.float32)}, tmp_path / "m.safetensors")


def _raiser(expression: str):
    def get(self, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ARG001
        raise eval(expression, {"zipfile": zipfile, "zlib": zlib})  # noqa: S307 - test constants

    return get


def _assert_one_error_line(err: str, path: Path | str, word: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert lines[0].startswith(f"ERROR {path}: "), err
    assert word in lines[0], err
    assert all(line.startswith("TIP ") for line in lines[1:]) and len(lines) <= 2, err


@pytest.mark.parametrize("kind", list(FOREIGN))
@pytest.mark.parametrize("command", ["stats", "show"])
def test_foreign_exception_from_a_reader_is_one_error_line(
    kind: str, command: str, ckpt: Path, cli_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    expression, word = FOREIGN[kind]
    monkeypatch.setattr(NativeReader, "get", _raiser(expression))
    args = [command, ckpt] + (["w"] if command == "show" else [])
    code, out, err = cli_run(*args)
    assert code == 2
    _assert_one_error_line(err, ckpt, word)
    assert "internal error" not in err  # a damaged file is not a bug of ours


def test_a_bug_of_ours_says_so_in_one_line(ckpt: Path, cli_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NativeReader, "get", _raiser("AttributeError('NoneType has no attribute shape')"))
    code, _, err = cli_run("stats", ckpt)
    assert code == 2
    _assert_one_error_line(err, ckpt, "internal error (AttributeError: NoneType has no attribute shape)")
    assert "rerun with -v and report it" in err


def test_weightvault_error_keeps_its_message_and_tip(ckpt: Path, cli_run, monkeypatch: pytest.MonkeyPatch) -> None:
    def get(self, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ARG001
        raise TruncatedFileError("ends at byte 10 of 24", path=ckpt, tensor=name, hint="copy it again")

    monkeypatch.setattr(NativeReader, "get", get)
    code, _, err = cli_run("stats", ckpt)
    assert code == 2
    assert err.splitlines() == [f"ERROR {ckpt}: tensor 'w': ends at byte 10 of 24", "TIP copy it again"]


def test_diff_names_both_files_when_the_exception_does_not(tmp_path: Path, cli_run, monkeypatch: pytest.MonkeyPatch) -> None:
    a = weightvault.save({"w": np.zeros(2, np.float32)}, tmp_path / "a.safetensors")
    b = weightvault.save({"w": np.ones(2, np.float32)}, tmp_path / "b.safetensors")
    monkeypatch.setattr(NativeReader, "get", _raiser("zlib.error('incorrect header check')"))
    code, _, err = cli_run("diff", a, b)
    assert code == 2
    _assert_one_error_line(err, f"{a}, {b}", "zlib.error")


def test_verbose_and_debug_show_the_traceback(ckpt: Path, cli_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NativeReader, "get", _raiser("KeyError('x')"))
    with pytest.raises(KeyError):
        cli_run("-v", "stats", ckpt)
    monkeypatch.setenv("WEIGHTVAULT_DEBUG", "1")
    with pytest.raises(KeyError):
        cli_run("stats", ckpt)


def test_ctrl_c_exits_130_quietly(ckpt: Path, cli_run, monkeypatch: pytest.MonkeyPatch) -> None:
    def get(self, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ARG001
        raise KeyboardInterrupt

    monkeypatch.setattr(NativeReader, "get", get)
    code, out, err = cli_run("stats", ckpt)
    assert code == 130 and err == ""


def test_usage_errors_stay_clicks(cli_run) -> None:
    code, _, err = cli_run("ls")
    assert code == 2 and "Missing argument" in err


# -- the real entry point, in a child process --------------------------------------------------------

_PATCHED_MAIN = textwrap.dedent(
    """
    import sys, zipfile, zlib
    from weightvault.formats.native import NativeReader
    expression = sys.argv.pop(1)
    def get(self, name, *args, **kwargs):
        raise eval(expression)
    NativeReader.get = get
    from weightvault.cli import main
    main()
    """
)


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, timeout=120, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_real_cli_prints_one_line_for_each_foreign_exception(kind: str, ckpt: Path) -> None:
    expression, word = FOREIGN[kind]
    result = _run(["-c", _PATCHED_MAIN, expression, "stats", str(ckpt)])
    assert result.returncode == 2, result.stderr
    _assert_one_error_line(result.stderr, ckpt, word)


def test_real_cli_traceback_only_with_verbose(ckpt: Path) -> None:
    expression = FOREIGN["zlib.error"][0]
    for args, env in (([ "-v", "stats"], None), (["stats"], {"WEIGHTVAULT_DEBUG": "1"})):
        result = _run(["-c", _PATCHED_MAIN, expression, *args, str(ckpt)], env)
        assert result.returncode == 1  # an uncaught exception: Python's own status
        assert "Traceback" in result.stderr and "zlib.error" in result.stderr


def test_real_cli_ctrl_c_exits_130_without_traceback(tmp_path: Path) -> None:
    """SIGINT while a command runs: exit status 130, nothing on stderr."""
    path = weightvault.save({"w": np.zeros(4, np.float32)}, tmp_path / "m.safetensors")
    slow = "print('reading', flush=True) or time.sleep(60) or KeyError('never')"
    script = _PATCHED_MAIN.replace("import sys,", "import sys, time,")
    proc = subprocess.Popen(
        [sys.executable, "-c", script, slow, "stats", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "reading\n"  # it is inside the command now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == ""


def _damaged_files(root: Path) -> dict[str, Path]:
    """Really damaged files of formats whose parsers raise foreign exceptions when unguarded."""
    import h5py

    out: dict[str, Path] = {}
    npz = root / "w.npz"
    np.savez_compressed(npz, w=np.arange(4096, dtype=np.float32))
    data = bytearray(npz.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = b"\xff" * 64  # inside the deflate stream: zlib.error or a CRC error
    npz.write_bytes(bytes(data))
    out["npz deflate"] = npz
    h5 = root / "w.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        g.create_dataset("dense/kernel:0", data=np.ones((4, 4), np.float32))
    data = bytearray(h5.read_bytes())
    data[600:1400] = bytes(800)  # object headers and B-trees: h5py raises RuntimeError/KeyError/OSError
    h5.write_bytes(bytes(data))
    out["h5 zeroed"] = h5
    zipped = root / "w.pt"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    data = bytearray(zipped.read_bytes())
    data[-22:] = b"PK\x05\x06" + b"\xff" * 18  # end-of-central-directory with absurd counts
    zipped.write_bytes(bytes(data))
    out["zip eocd"] = zipped
    return out


@pytest.mark.parametrize("command", ["ls", "stats"])
def test_really_damaged_files_give_one_error_line(tmp_path: Path, command: str) -> None:
    for label, path in _damaged_files(tmp_path).items():
        result = _run(["-m", "weightvault", command, str(path)])
        if result.returncode == 0:
            continue  # this damage happened to leave the file readable; nothing to report
        assert "Traceback" not in result.stderr, (label, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines and lines[0].startswith("ERROR "), (label, result.stderr)
        assert str(path) in lines[0], (label, result.stderr)
        assert "internal error" not in lines[0], (label, result.stderr)
