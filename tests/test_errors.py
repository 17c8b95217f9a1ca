"""Errors whose last line is the problem, and one run per output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import BUNDLE, last_line, run_bundle
from scripts.datalist import DatalistError
from scripts.errors import error_summary, root_error
from scripts.run_lock import RunLockError, lock_output_dir, unlock_output_dir


def _wrapped(inner: BaseException) -> RuntimeError:
    """``inner`` inside the layers MONAI adds: a transform, a config expression, a list of expressions."""
    try:
        try:
            try:
                raise inner
            except BaseException as e:
                raise RuntimeError("applying transform <LoadImaged>") from e
        except RuntimeError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: \n\"$@evaluator.run()\"") from e
    except RuntimeError as e:
        return e


def test_the_last_line_is_the_project_message_or_the_root_cause():
    ours = _wrapped(DatalistError("datalist d.json, training[3]: no 'anatomy'."))
    assert isinstance(root_error(ours), DatalistError)
    assert error_summary(ours) == "ERROR: datalist d.json, training[3]: no 'anatomy'."
    theirs = _wrapped(OSError("image file is truncated"))
    assert error_summary(theirs) == "ERROR: OSError: image file is truncated"


def test_an_empty_validation_stops_training_before_the_model_with_the_message_last(mini_demo, tmp_path):
    data = json.load(open(os.path.join(mini_demo, "datalist.json")))
    data["validation"] = []
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datalist.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    proc = run_bundle("run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(tmp_path / "data"),
                      "--output_dir", str(out), "--max_epochs", "1")
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith(f"ERROR: datalist {tmp_path / 'data' / 'datalist.json'}: 'validation' is empty")
    assert "Traceback" not in proc.stderr  # a user's error: the message, not 100 lines of MONAI
    assert not os.path.exists(out / "models")


def test_a_second_run_in_the_same_output_dir_is_refused(mini_demo, tmp_path):
    out = tmp_path / "out"
    lock_output_dir(str(out), "training")  # this process is the first run
    try:
        proc = run_bundle("run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", mini_demo,
                          "--output_dir", str(out), "--max_epochs", "1")
    finally:
        unlock_output_dir(str(out))
    line = last_line(proc.stderr)
    assert proc.returncode == 1 and line.startswith(f"ERROR: output_dir {out} is in use by another run: training (pid {os.getpid()}")
    assert not os.path.exists(out / "models") and not os.path.exists(out / "mlruns.db")


HOLD = "import sys, time; sys.path.insert(0, {bundle!r}); from scripts.run_lock import lock_output_dir; " \
       "lock_output_dir({out!r}, 'inference'); print('locked', flush=True); time.sleep(120)"


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    out = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(bundle=BUNDLE, out=out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=rf"in use by another run: inference \(pid {holder.pid} "):
            lock_output_dir(out)
    finally:
        holder.kill()  # like kill -9: the OS releases the lock, nothing stale is left
        holder.wait()
    assert lock_output_dir(out) == out
    unlock_output_dir(out)


def test_an_output_dir_that_is_a_file_is_refused_at_once(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunLockError, match="is a file, not a folder"):
        lock_output_dir(str(tmp_path / "file"))
    with pytest.raises(RunLockError, match="cannot be created"):
        lock_output_dir(str(tmp_path / "file" / "sub"))
