"""Non-tensor state in `ls`/`show`, name suggestions, what start-up imports (issue 14.5, 14.9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Never imported by `import weightvault` or `weightvault --help`: frameworks, and the libraries a
# command needs only once it reads, hashes or prints (see bench/startup.py for the times).
HEAVY = (
    "torch",
    "tensorflow",
    "keras",
    "jax",
    "onnx",
    "onnxruntime",
    "h5py",
    "gguf",
    "safetensors",
    "ml_dtypes",
    "xxhash",
    "isal",
    "google_crc32c",
    "rich.console",
    "rich.table",
    "importlib.metadata",
    "webbrowser",
)


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import weightvault",
        "from weightvault.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "help"],
)
def test_startup_imports_nothing_heavy(code: str) -> None:
    loaded = _modules_after(code)
    assert "weightvault" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_import_weightvault_imports_no_numpy() -> None:
    assert "numpy" not in _modules_after("import weightvault")


def test_lazy_names_still_resolve() -> None:
    code = (
        "import weightvault\n"
        "from weightvault import *\n"
        "assert callable(save) and callable(load) and callable(convert) and callable(verify)\n"
        "assert weightvault.CheckpointReader.__name__ == 'FormatReader'\n"
        "import ml_dtypes, numpy as np\n"
        "from weightvault.core.dtypes import DTYPES, dtype_name\n"
        "assert dtype_name(np.zeros(1, ml_dtypes.bfloat16).dtype) == 'bfloat16'\n"
    )
    _modules_after(code)


def test_dtypes_table_loads_ml_dtypes_on_demand() -> None:
    code = (
        "from weightvault.core.dtypes import DTYPES, dtype_name\n"
        "import sys\n"
        "assert 'bfloat16' in DTYPES and len(DTYPES) == len(list(DTYPES))\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "assert DTYPES['float8_e5m2'].itemsize == 1\n"
        "assert dtype_name(DTYPES['bfloat16']) == 'bfloat16'\n"
    )
    loaded = _modules_after(code)
    assert "ml_dtypes" in loaded


# -- non-tensor state: ls and show ----------------------------------------------------------------
def _torch_training_state() -> dict:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95))
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 1200,
        "epoch": 7,
        "lr": 2.5e-4,
        "metrics": {"val_loss": 0.125, "tag": "best"},
    }


@pytest.fixture(scope="module")
def training_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    import weightvault

    state = _torch_training_state()
    d = tmp_path_factory.mktemp("train")
    native = weightvault.save(state, d / "ckpt", metadata={"run": "exp-3"})
    torch.save(state, d / "train.pt")
    return {"native": Path(native), "pytorch": d / "train.pt"}


@pytest.mark.parametrize("kind", ["native", "pytorch"])
def test_ls_lists_state_after_the_tensors(
    training_ckpts: dict[str, Path], kind: str, cli_run
) -> None:
    code, out, err = cli_run("ls", training_ckpts[kind])
    assert code == 0, err
    lines = out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.strip()}
    assert rows["step"] == ["int", "1200"]
    assert rows["epoch"] == ["int", "7"]
    assert rows["lr"] == ["float", "0.00025"]
    assert rows["metrics/val_loss"] == ["float", "0.125"]
    assert rows["metrics/tag"] == ["str", "best"]
    assert rows["optimizer/param_groups/0/lr"] == ["float", "0.0003"]
    assert rows["optimizer/param_groups/0/betas"] == ["tuple", "(0.9,", "0.95)"]
    # after every tensor row, before the summary line
    last_tensor = max(i for i, line in enumerate(lines) if line.startswith("optimizer/state/"))
    first_state = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert last_tensor < first_state < len(lines) - 1
    assert "tensors," in lines[-1]
    # the object tree is not listed as metadata: every row above is a value of its own
    assert not [line for line in lines if "/tree" in line or '"t": ' in line]


def test_ls_json_has_a_state_list(training_ckpts: dict[str, Path], cli_run) -> None:
    code, out, err = cli_run("ls", training_ckpts["native"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    state = {s["path"]: s for s in doc["state"]}
    assert state["step"] == {"path": "step", "type": "int", "value": 1200, "source": "structure"}
    assert state["optimizer/param_groups/0/betas"]["value"] == [0.9, 0.95]
    assert state["metadata/run"] == {
        "path": "metadata/run", "type": "str", "value": "exp-3", "source": "metadata"}
    tensor_names = {t["name"] for t in doc["tensors"]}
    assert not tensor_names & set(state)
    assert "model/0.weight" in tensor_names


@pytest.mark.parametrize("kind", ["native", "pytorch"])
def test_show_prints_state_values(training_ckpts: dict[str, Path], kind: str, cli_run) -> None:
    path = training_ckpts[kind]
    assert cli_run("show", path, "step")[1].splitlines() == ["step  int", "1200"]
    assert cli_run("show", path, "optimizer/param_groups/0/lr")[1].splitlines() == [
        "optimizer/param_groups/0/lr  float", "0.0003"]
    assert cli_run("show", path, "optimizer/param_groups/0/betas/1")[1].splitlines()[-1] == "0.95"
    code, out, _ = cli_run("show", path, "metrics")
    assert code == 0 and json.loads(out.splitlines()[1]) == {"val_loss": 0.125, "tag": "best"}
    code, out, _ = cli_run("show", path, "epoch", "--json")
    doc = json.loads(out)
    assert (doc["name"], doc["type"], doc["value"], doc["path"]) == ("epoch", "int", 7, str(path))
    # a subtree holding tensors names them instead of reading them
    code, out, _ = cli_run("show", path, "optimizer/state/0")
    assert code == 0 and "<tensor optimizer/state/0/exp_avg>" in out
    # tensors still print as tensors
    out = cli_run("show", path, "optimizer/state/0/exp_avg")[1]
    assert out.startswith("optimizer/state/0/exp_avg  float32 [4, 3]")


def test_show_metadata_value(training_ckpts: dict[str, Path], cli_run) -> None:
    for name in ("metadata/run", "run"):
        code, out, err = cli_run("show", training_ckpts["native"], name)
        assert code == 0, err
        assert out.splitlines() == ["metadata/run  str", "exp-3"]


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("stpe", "step"),
        ("0.weight", "model/0.weight"),
        ("optimizer/param_groups/0/lrr", "optimizer/param_groups/0/lr"),
        ("bias", "model/0.bias or model/2.bias"),  # a name's last part, too short for difflib
    ],
)
def test_show_unknown_name_suggests_close_matches(
    training_ckpts: dict[str, Path], typed: str, meant: str, cli_run
) -> None:
    code, out, err = cli_run("show", training_ckpts["native"], typed)
    assert code != 0 and out == ""
    assert f"did you mean {meant}" in err
    assert str(training_ckpts["native"]) in err and repr(typed) in err


def test_show_unknown_name_with_nothing_close(training_ckpts: dict[str, Path], cli_run) -> None:
    code, _, err = cli_run("show", training_ckpts["native"], "zzzzzzzz")
    assert code != 0
    assert "did you mean" not in err and "weightvault ls" in err
