"""Adding an anatomy: the grown network keeps every old anatomy's output bit for bit, before and after training."""

from __future__ import annotations

import pytest
import torch

from scripts import Anatomy, AnatomySet, GU2Net, grow_network, most_similar_anatomy, trainable_parameters


def _anatomies(*specs: tuple[str, int, tuple[int, int]]) -> AnatomySet:
    return AnatomySet([Anatomy.from_dict(n, {"landmarks": c, "size": list(s)}) for n, c, s in specs])


OLD = (("head", 5, (32, 48)), ("hand", 4, (32, 32)), ("chest", 3, (48, 32)))
NEW = ("pelvis", 6, (48, 32))


@pytest.fixture()
def base_ckpt(tmp_path) -> str:
    torch.manual_seed(0)
    old = _anatomies(*OLD)
    net = GU2Net(old.landmark_counts)
    # non-trivial batch-norm statistics, so that a copy of the wrong domain's statistics would show
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / "model.pt")
    torch.save({"model": net.state_dict(), "anatomies": old.state_dict()}, path)
    return path


def _heatmaps(net: GU2Net, domains: range, x: torch.Tensor) -> list[torch.Tensor]:
    net.eval()
    with torch.no_grad():
        return [net(x, d) for d in domains]


def test_old_anatomies_are_bit_identical_before_and_after_training_the_new_one(base_ckpt):
    x = torch.randn(2, 1, 32, 32)
    base = GU2Net(_anatomies(*OLD).landmark_counts)
    base.load_state_dict(torch.load(base_ckpt, weights_only=True)["model"])
    before = _heatmaps(base, range(3), x)

    grown_set = _anatomies(*OLD, NEW)
    grown = grow_network(GU2Net(grown_set.landmark_counts), base_ckpt, grown_set)
    assert all(torch.equal(a, b) for a, b in zip(before, _heatmaps(grown, range(3), x)))
    # the new domain starts from the most similar trained domain's layers (chest: the same 3:2 input)
    assert most_similar_anatomy(_anatomies(*OLD), "pelvis", grown_set) == "chest"
    assert torch.equal(grown.local_net.enc[2].conv1.depthwise[3].weight, grown.local_net.enc[2].conv1.depthwise[2].weight)
    # frozen: every trained tensor; trainable: the new domain's alone
    trainable = {k for k, p in grown.named_parameters() if p.requires_grad}
    assert trainable and all(".3." in k for k in trainable)
    assert "local_net.enc.0.conv1.pointwise.weight" not in trainable

    optimizer = torch.optim.Adam(trainable_parameters(grown), lr=1e-2, weight_decay=1e-4)
    grown.train()
    target = torch.rand(2, 6, 32, 32)
    first_new = _heatmaps(grown, range(3, 4), x)[0]
    for _ in range(3):
        grown.train()
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy(grown(x, 3), target).backward()
        optimizer.step()
    after = _heatmaps(grown, range(4), x)
    assert all(torch.equal(a, b) for a, b in zip(before, after[:3]))
    assert not torch.equal(first_new, after[3])  # the new anatomy did train


def test_a_checkpoint_whose_anatomies_do_not_lead_is_refused(base_ckpt):
    reordered = _anatomies(OLD[1], OLD[0], OLD[2], NEW)
    with pytest.raises(ValueError, match="must come first"):
        grow_network(GU2Net(reordered.landmark_counts), base_ckpt, reordered)
    same = _anatomies(*OLD)
    with pytest.raises(ValueError, match="adds no anatomy"):
        grow_network(GU2Net(same.landmark_counts), base_ckpt, same)


def test_add_anatomy_workflow_gains_the_fourth_anatomy_and_resumes(tiny_demo, tmp_path):
    """Through `monai.bundle run add_anatomy`: a head/hand/chest model gains the pelvis; the old anatomies'
    heatmaps are unchanged; a second run with more epochs resumes the first."""
    import json
    import os

    from conftest import BUNDLE
    from scripts import read_checkpoint
    from test_workflows import bundle

    data = json.load(open(os.path.join(tiny_demo, "datalist.json")))
    three = tmp_path / "three"
    three.mkdir()
    os.symlink(os.path.join(tiny_demo, "images"), str(three / "images"))
    del data["anatomies"]["pelvis"]
    for split in ("training", "validation", "test"):
        data[split] = [d for d in data[split] if d["anatomy"] != "pelvis"]
    (three / "datalist.json").write_text(json.dumps(data))
    base_out, out = str(tmp_path / "base"), str(tmp_path / "grown")
    small = ["--val_interval", "1", "--batch_size", "2"]
    bundle("run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(three), "--output_dir", base_out,
           "--max_epochs", "1", *small)  # fmt: skip
    base_ckpt = os.path.join(base_out, "models", "model.pt")
    grow = ["run", "add_anatomy", "--config_file", "['configs/train.yaml','configs/add_anatomy.yaml']",
            "--base_ckpt", base_ckpt, "--dataset_dir", tiny_demo, "--output_dir", out, *small]  # fmt: skip
    bundle(*grow, "--max_epochs", "1")
    second = bundle(*grow, "--max_epochs", "2")
    assert "Resumed from" in second.stdout + second.stderr
    grown_ckpt = read_checkpoint(os.path.join(out, "models", "model.pt"))
    assert grown_ckpt["anatomies"]["names"] == ["head", "hand", "chest", "pelvis"]
    base = GU2Net([19, 37, 6]).to(memory_format=torch.channels_last)
    base.load_state_dict(read_checkpoint(base_ckpt)["model"])
    grown = GU2Net([19, 37, 6, 10]).to(memory_format=torch.channels_last)
    grown.load_state_dict(grown_ckpt["model"])
    x = torch.randn(1, 1, 64, 48)
    assert all(torch.equal(a, b) for a, b in zip(_heatmaps(base, range(3), x), _heatmaps(grown, range(3), x)))
    # the pelvis started from an old domain's depth-wise filters and trained away from them
    enc = grown.local_net.enc[1].conv1.depthwise
    assert not any(torch.equal(enc[3].weight, enc[d].weight) for d in range(3))
