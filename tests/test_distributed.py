"""Multi-process training (configs/multi_gpu_train.yaml) under torchrun: 2 CPU processes, gloo, loopback.

One short run on the tiny demo, with a probe handler (tests/ddp_probe.py) recording what every rank did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUNDLE

TESTS = os.path.dirname(os.path.abspath(__file__))
MULTI = "['configs/inference.yaml','configs/train.yaml','configs/multi_gpu_train.yaml','{probe}']"
PROBE_CONFIG = """
probe:
  _target_: ddp_probe.Probe
  folder: "@output_dir"
  network: "@network"
  evaluator: "@validate#evaluator"
train#trainer#train_handlers: "$scripts.rank_zero_only(@train#handlers) + [@probe]"
"""


@pytest.fixture(scope="module")
def ddp_run(tiny_demo, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ddp")
    probe = folder / "probe.yaml"
    probe.write_text(PROBE_CONFIG)
    out = str(folder / "out")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=os.pathsep.join([TESTS, env.get("PYTHONPATH", "")]), PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", "--config_file", MULTI.format(probe=probe),
        "--dataset_dir", tiny_demo, "--output_dir", out, "--max_epochs", "2", "--val_interval", "1",
        "--batch_size", "2", "--log_mlflow_model", "false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    probes = [json.load(open(os.path.join(out, f"probe_rank{r}.json"))) for r in (0, 1)]
    return {"out": out, "data": tiny_demo, "probes": probes}


def test_both_ranks_finish_with_the_same_anatomy_and_weights_at_every_step(ddp_run):
    r0, r1 = ddp_run["probes"]
    assert r0["completed"] and r1["completed"]
    assert len(r0["steps"]) == len(r1["steps"]) == 2 * 4  # 16 samples, 2 per rank and step: 4 steps an epoch
    for s0, s1 in zip(r0["steps"], r1["steps"]):
        assert (s0["epoch"], s0["iteration"]) == (s1["epoch"], s1["iteration"])
        assert len(set(s0["domains"] + s1["domains"])) == 1  # one anatomy in the step, on both ranks
        assert s0["weights"] == s1["weights"]  # DDP: equal weights after every optimizer step
    assert len({s["domains"][0] for s in r0["steps"]}) == 4


def test_ranks_take_disjoint_samples_that_cover_each_epoch(ddp_run):
    data = json.load(open(os.path.join(ddp_run["data"], "datalist.json")))
    training = sorted(tuple(round(float(v), 2) for v in np.ravel(item["landmarks"][:2])) for item in data["training"])
    r0, r1 = ddp_run["probes"]
    for epoch in (1, 2):
        s0 = [tuple(x) for s in r0["steps"] if s["epoch"] == epoch for x in s["samples"]]
        s1 = [tuple(x) for s in r1["steps"] if s["epoch"] == epoch for x in s["samples"]]
        assert not set(s0) & set(s1)
        assert sorted(s0 + s1) == training  # every sample once (16 = 4 global batches of 2 x 2: no padding)


def test_loss_decreases(ddp_run):
    steps = ddp_run["probes"][0]["steps"] + ddp_run["probes"][1]["steps"]
    mean = {e: np.mean([s["loss"] for s in steps if s["epoch"] == e]) for e in (1, 2)}
    assert mean[2] < mean[1]


def test_only_rank_zero_logs_checkpoints_and_tracks(ddp_run):
    r0, r1 = ddp_run["probes"]
    rank_zero = {"CheckpointSaver", "MLFlowHandler", "MLflowModelLogger", "StatsHandler"}
    assert rank_zero <= set(r0["trainer_handlers"]) and not rank_zero & set(r1["trainer_handlers"])
    assert {"CheckpointSaver", "MLFlowHandler", "StatsHandler"} <= set(r0["evaluator_handlers"])
    assert not rank_zero & set(r1["evaluator_handlers"])
    # the handlers every rank needs
    for r in (r0, r1):
        assert {"ResumeFromLatest", "LrScheduleHandler", "ValidationHandler", "SetSamplerEpoch"} <= set(r["trainer_handlers"])
    models = os.listdir(os.path.join(ddp_run["out"], "models"))
    assert {"model.pt", "checkpoint_epoch=2.pt"} <= set(models)
    import mlflow

    client = mlflow.MlflowClient("sqlite:///" + os.path.join(ddp_run["out"], "mlruns.db"))
    (run,) = client.search_runs([client.get_experiment_by_name("gu2net").experiment_id])
    assert {"val_mre", "val_mre_hand_MRE", "epoch_loss"} <= set(run.data.metrics)


def test_sharded_validation_equals_one_process_validation(ddp_run, monkeypatch):
    """Each rank validated a share of the batches; the gathered figure equals one process on the same weights."""
    import torch
    from monai.bundle import ConfigParser

    from scripts import read_checkpoint

    r0, r1 = ddp_run["probes"]
    assert [v["val_mre"] for v in r0["validations"]] == [v["val_mre"] for v in r1["validations"]]
    assert all(v["batches"] == 2 for v in r0["validations"] + r1["validations"])  # 8 images in 4 batches of 2
    best = min(v["val_mre"] for v in r0["validations"])  # model.pt holds the weights of the best validation
    monkeypatch.chdir(BUNDLE)
    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, f) for f in ("configs/inference.yaml", "configs/train.yaml")])
    parser.update({"dataset_dir": ddp_run["data"], "output_dir": ddp_run["out"] + "_one", "batch_size": 2, "validate#handlers": []})
    parser.get_parsed_content("network").load_state_dict(read_checkpoint(os.path.join(ddp_run["out"], "models", "model.pt"))["model"])
    evaluator = parser.get_parsed_content("validate#evaluator")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same kernels, the same rounding
    try:
        evaluator.run()
    finally:
        torch.set_num_threads(threads)
    assert evaluator.state.iteration == 4
    assert evaluator.state.metrics["val_mre"] == best
