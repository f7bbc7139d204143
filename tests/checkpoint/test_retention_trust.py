"""Retention never deletes silently: a changed policy on reopen, a missing best= metric, best-K ties."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import weightvault.torch as wvt
from weightvault.checkpoint import AnyOf, CheckpointManager, KeepBestK, KeepLastN
from weightvault.errors import CheckpointPolicyError


class _Trainer:
    """A real (tiny) torch training loop whose captured state the manager saves."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.step = 0

    def train(self) -> dict:
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        return wvt.capture(model=self.model, optimizer=self.opt, step=self.step, rng=False)


def _dirs(run: Path) -> list[str]:
    return sorted(n for n in os.listdir(run) if n.startswith("step-"))


def _run_with_best(run: Path, accs: list[float], **kw) -> _Trainer:
    trainer = _Trainer()
    with CheckpointManager(run, max_to_keep=1, best=("val_acc", "max", 1), fsync=False, **kw) as mgr:
        for acc in accs:
            state = trainer.train()
            mgr.save(trainer.step, state, metrics={"val_acc": acc})
        assert mgr.steps() == [1, len(accs)]  # the best (step 1) and the newest
    return trainer


def test_reopening_with_a_misspelt_best_metric_is_refused(tmp_path: Path) -> None:
    trainer = _run_with_best(tmp_path, [0.9, 0.5, 0.6])
    before = _dirs(tmp_path)
    with pytest.raises(CheckpointPolicyError) as info:
        CheckpointManager(tmp_path, max_to_keep=1, best=("val_accuracy", "max", 1), fsync=False)
    msg = str(info.value)
    assert "'val_acc'" in msg and "'val_accuracy'" in msg and str(tmp_path) in msg
    assert "allow_policy_change=True" in info.value.hint
    # other retention settings are compared too: the default max_to_keep=5 is a change from 1
    with pytest.raises(CheckpointPolicyError, match=r"max_to_keep: stored 1, given 5"):
        CheckpointManager(tmp_path, best=("val_acc", "max", 1), fsync=False)
    with pytest.raises(CheckpointPolicyError, match="keep_every_n_steps"):
        CheckpointManager(tmp_path, max_to_keep=1, keep_every_n_steps=10, best=("val_acc", "max", 1))
    with pytest.raises(CheckpointPolicyError, match="custom_policy"):
        CheckpointManager(tmp_path, max_to_keep=1, best=("val_acc", "max", 1), policy=KeepLastN(1))
    assert _dirs(tmp_path) == before  # nothing deleted by the refused managers

    # the stored settings reopen fine (the refusals released the lock), and the best survives
    with CheckpointManager(tmp_path, max_to_keep=1, best=("val_acc", "max", 1), fsync=False) as mgr:
        mgr.save(4, trainer.train(), metrics={"val_acc": 0.1})
        assert mgr.steps() == [1, 4] and mgr.best() == 1
        best = mgr.load("best", framework="torch")
        assert best["step"] == 1


def test_allow_policy_change_adopts_and_stores_the_new_policy(tmp_path: Path) -> None:
    trainer = _run_with_best(tmp_path, [0.9, 0.5])
    with CheckpointManager(
        tmp_path, max_to_keep=1, best=("val_loss", "min", 1), fsync=False, allow_policy_change=True
    ) as mgr:
        mgr.save(3, trainer.train(), metrics={"val_loss": 0.3})
        # the old best by val_acc is no longer protected: deleted on purpose, as asked
        assert mgr.steps() == [3]
    # from now on the new settings are the stored ones
    CheckpointManager(tmp_path, max_to_keep=1, best=("val_loss", "min", 1), fsync=False).close()
    with pytest.raises(CheckpointPolicyError):
        CheckpointManager(tmp_path, max_to_keep=1, best=("val_acc", "max", 1), fsync=False)


@pytest.mark.parametrize("async_save", [False, True])
def test_a_save_without_the_best_metric_is_an_error(tmp_path: Path, async_save: bool) -> None:
    trainer = _Trainer()
    with CheckpointManager(
        tmp_path, max_to_keep=1, best=("val_acc", "max", 1), async_save=async_save, fsync=False
    ) as mgr:
        mgr.save(1, trainer.train(), metrics={"val_acc": 0.9})
        with pytest.raises(CheckpointPolicyError) as info:
            mgr.save(2, trainer.train(), metrics={"val_accuracy": 0.95, "loss": 0.1})
        assert "'val_acc'" in str(info.value) and "val_accuracy" in str(info.value)
        with pytest.raises(CheckpointPolicyError, match="metrics given: none"):
            mgr.save(2, trainer.train())
        mgr.wait_until_finished()
        assert mgr.steps() == [1] and _dirs(tmp_path) == ["step-00000001"]  # nothing written
        # a step that was deliberately not evaluated says so; the best is still kept
        mgr.save(3, trainer.train(), metrics={"val_acc": None})
        mgr.save(4, trainer.train(), metrics={"val_acc": 0.5})
        mgr.wait_until_finished()
        assert mgr.steps() == [1, 4] and mgr.best() == 1


class _OddsOnly:  # a user policy without a dataclass repr ("<... object at 0x...>")
    def keep(self, checkpoints):
        return {c.step: ["odd"] for c in checkpoints if c.step % 2}


def test_a_custom_policy_reopens_as_itself(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, policy=_OddsOnly(), fsync=False) as mgr:
        mgr.save(1, _Trainer().train())
    CheckpointManager(tmp_path, policy=_OddsOnly(), fsync=False).close()  # a new instance: same
    with pytest.raises(CheckpointPolicyError, match="custom_policy"):
        CheckpointManager(tmp_path, policy=KeepLastN(2), fsync=False)


def test_best_k_inside_a_custom_policy_needs_its_metric_too(tmp_path: Path) -> None:
    policy = AnyOf(KeepLastN(1), KeepBestK("loss", "min", 1))
    with CheckpointManager(tmp_path, policy=policy, fsync=False) as mgr:
        with pytest.raises(CheckpointPolicyError, match="'loss'"):
            mgr.save(1, _Trainer().train(), metrics={"los": 0.5})


# -- ties in best-K ---------------------------------------------------------------------------------


def test_best_k_ties_keep_the_earlier_step(tmp_path: Path) -> None:
    """A plateau does not churn the kept set: on equal metric values the earlier step stays best."""
    trainer = _Trainer()
    with CheckpointManager(tmp_path, max_to_keep=1, best=("val_acc", "max", 2), fsync=False) as mgr:
        for acc in [0.5, 0.8, 0.8, 0.8, 0.3]:
            mgr.save(trainer.step + 1, trainer.train(), metrics={"val_acc": acc})
        # steps 2, 3, 4 tie at 0.8: the two earliest are the best two, step 4 is deleted
        assert mgr.best() == 2
        assert mgr.steps() == [2, 3, 5]
        reasons = {c.step: c.kept_because for c in mgr.checkpoints()}
        assert reasons[2] == ["best #1 by val_acc (max)"] and reasons[3] == ["best #2 by val_acc (max)"]


def test_best_k_tie_rule_in_min_mode_and_across_int_and_float() -> None:
    from weightvault.checkpoint import CheckpointRecord

    records = [CheckpointRecord(s, float(s), {"loss": v}) for s, v in [(7, 1.0), (3, 2), (5, 1), (9, 1.0)]]
    # equal values (1 == 1.0) rank by step, earlier first, whatever the input order
    assert [r.step for r in KeepBestK("loss", "min", 4).ranked(records)] == [5, 7, 9, 3]
    assert sorted(KeepBestK("loss", "min", 2).keep(records)) == [5, 7]
