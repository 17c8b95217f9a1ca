"""The best model across restarts, atomic checkpoint files (a kill between write and rename), pruning on disk."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from ignite.engine import Engine, Events

from conftest import BUNDLE
from scripts import durable
from scripts.checkpoint_saver import AtomicDiskSaver, SafeCheckpointSaver, read_best_score
from scripts.checkpoints import read_checkpoint


def validate(save_dir: str, scores: list[float], resume: bool = True, net: torch.nn.Module | None = None) -> list:
    """A stand-in validator: epoch k scores ``scores[k-1]`` (val_mre, lower is better) and the saver keeps the best
    in ``save_dir/model.pt``; returns the best score on disk after every epoch."""
    net = net or torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def score(e):  # registered before the saver, as MONAI's metrics are
        e.state.metrics = {"val_mre": scores[e.state.epoch - 1]}
        e.state.key_metric_name = "val_mre"

    saver = SafeCheckpointSaver(
        save_dir, {"model": net}, save_key_metric=True, key_metric_filename="model.pt",
        key_metric_negative_sign=True, resume=resume,
    )  # fmt: skip
    saver.attach(engine)
    on_disk = []
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: on_disk.append(read_best_score(os.path.join(save_dir, "model.pt"))["value"])
    )
    engine.run([0], max_epochs=len(scores))
    return on_disk


def test_the_best_score_never_rises_across_a_restart(tmp_path, caplog):
    first = validate(str(tmp_path), [5.0, 6.0])
    assert first == [5.0, 5.0]
    # the restart (a resumed or extended run) reads model.pt's score back: 7 is not "a new best" any more
    with caplog.at_level("INFO"):
        second = validate(str(tmp_path), [7.0, 4.5, 4.8])
    assert second == [5.0, 4.5, 4.5]
    assert all(b <= a for a, b in zip(first + second, (first + second)[1:]))
    assert "only a better val_mre replaces it" in caplog.text
    assert "val_mre 7.0000 at epoch 1 is not better than 5.0000" in caplog.text
    assert read_best_score(str(tmp_path / "model.pt")) == {"metric": "val_mre", "value": 4.5, "epoch": 2}
    # a new run in the same folder (resume off) starts its own best, with a warning
    with caplog.at_level("WARNING"):
        assert validate(str(tmp_path), [9.0], resume=False) == [9.0]
    assert "resume is off" in caplog.text


def test_a_score_of_nan_saves_no_model(tmp_path):
    assert validate(str(tmp_path), [3.0, float("nan"), 2.0]) == [3.0, 3.0, 2.0]


def test_a_best_model_without_a_score_is_replaced_with_a_warning(tmp_path, caplog):
    net = torch.nn.Linear(2, 1)
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")  # written before scores were saved
    with caplog.at_level("WARNING"):
        assert validate(str(tmp_path), [8.0]) == [8.0]
    assert "holds no score" in caplog.text


def test_a_failed_write_leaves_the_previous_best_model(tmp_path, monkeypatch):
    saver = AtomicDiskSaver(str(tmp_path), filename="model.pt")
    saver({"w": torch.tensor(1.0)}, "ignored.pt")
    saver.remove("ignored.pt")  # ignite removes the replaced file first; a fixed-name file is replaced by the rename

    def broken(tmp, path):
        raise OSError("disk full")

    monkeypatch.setattr(durable, "_rename", broken)
    with pytest.raises(OSError, match="disk full"):
        saver({"w": torch.tensor(2.0)}, "ignored.pt")
    assert float(read_checkpoint(str(tmp_path / "model.pt"))["w"]) == 1.0
    assert os.listdir(tmp_path) == ["model.pt"]  # the temporary file is removed
    mode = stat.S_IMODE(os.stat(tmp_path / "model.pt").st_mode)
    assert mode == durable.default_file_mode()  # like any file the run writes, not mkstemp's 0600


KILL_BETWEEN_WRITE_AND_RENAME = """
import os, signal, sys, torch
sys.path.insert(0, {bundle!r})
sys.path.insert(0, {tests!r})
from test_restarts import validate
from scripts import durable

validate({out!r}, [5.0])                      # a first run: model.pt with val_mre 5

def killed(tmp, path):                        # kill -9 once the new file is written and fsynced, before the rename
    os.kill(os.getpid(), signal.SIGKILL)

durable._rename = killed
validate({out!r}, [4.0])                      # a better score: its write is killed
"""


def test_kill_9_between_writing_and_renaming_the_best_model_leaves_the_previous_one(tmp_path):
    out = str(tmp_path / "models")
    script = KILL_BETWEEN_WRITE_AND_RENAME.format(bundle=BUNDLE, tests=os.path.dirname(__file__), out=out)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read_best_score(os.path.join(out, "model.pt"))["value"] == 5.0  # readable, the previous best
    leftovers = [n for n in os.listdir(out) if n.startswith(durable.TMP_PREFIX)]
    assert len(leftovers) == 1 and leftovers[0].endswith("model.pt")
    # the next run clears the killed write's leftover and keeps comparing against 5
    assert validate(out, [6.0, 4.0]) == [5.0, 4.0]
    assert sorted(os.listdir(out)) == ["model.pt"]


def test_epoch_checkpoints_are_pruned_on_disk_after_a_restart(tmp_path):
    for n in (1, 2, 3, 9):  # 1-3 from before the restart, 9 from an abandoned longer run
        torch.save({"n": n}, tmp_path / f"checkpoint_epoch={n}.pt")
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)

    @engine.on(Events.STARTED)
    def resume(e):  # what ResumeFromLatest does: continue after epoch 3
        e.state.epoch, e.state.iteration = 3, 3

    objects = {"model": net, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1)}  # as train.yaml's
    SafeCheckpointSaver(str(tmp_path), objects, save_interval=1, epoch_level=True, n_saved=2).attach(engine)
    engine.run([0], max_epochs=5)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"]


def test_a_resumed_run_draws_the_batch_order_of_an_uninterrupted_one():
    from monai.data import Dataset

    from scripts.sampling import SetSamplerEpoch, anatomy_dataloader

    data = [{"domain": i % 2, "i": i} for i in range(12)]

    def orders(resume_after: int | None, epochs: int = 3) -> list[list[list[int]]]:
        loader = anatomy_dataloader(Dataset(data), batch_size=2, shuffle=True, seed=5)
        seen: list[list[list[int]]] = []
        engine = Engine(lambda e, batch: seen[-1].append(batch["i"].tolist()))
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append([]))
        if resume_after:
            engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", resume_after))
        SetSamplerEpoch().attach(engine)
        engine.run(loader, max_epochs=epochs)
        return seen

    full = orders(None)
    assert full[0] != full[1] != full[2]  # every epoch its own order
    assert orders(resume_after=2) == [full[2]]  # epoch 3 after a restart: epoch 3's order, not epoch 1's
