import pytest
import torch
from ignite.engine import Engine

from scripts.anatomies import Anatomy, AnatomySet
from scripts.checkpoints import CheckedCheckpointLoader, CheckpointError, ResumeFromLatest, read_checkpoint
from scripts.gu2net import GU2Net


def _anatomies(*names):
    return AnatomySet([Anatomy(n, ("a", "b"), (16, 16)) for n in names])


def _save(path, net, anatomies):
    torch.save({"model": net.state_dict(), "anatomies": anatomies.state_dict()}, path)


def test_checkpoint_loads_weights_only_and_restores_anatomies(tmp_path):
    net, anatomies = GU2Net([2, 2]), _anatomies("head", "hand")
    _save(tmp_path / "m.pt", net, anatomies)
    ckpt = read_checkpoint(str(tmp_path / "m.pt"))  # weights_only=True inside
    assert ckpt["anatomies"]["names"] == ["head", "hand"]
    assert AnatomySet.from_checkpoint(str(tmp_path / "m.pt")).names == ["head", "hand"]
    other = GU2Net([2, 2])
    CheckedCheckpointLoader(str(tmp_path / "m.pt"), {"model": other, "anatomies": _anatomies("head", "hand")})(Engine(lambda e, b: None))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))


def test_truncated_and_missing_checkpoints_name_the_file(tmp_path):
    _save(tmp_path / "m.pt", GU2Net([2]), _anatomies("head"))
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot be read.*truncated"):
        read_checkpoint(str(tmp_path / "cut.pt"))
    with pytest.raises(CheckpointError, match=r"nope\.pt: file does not exist"):
        CheckedCheckpointLoader(str(tmp_path / "nope.pt"), {"model": GU2Net([2])})(Engine(lambda e, b: None))


def test_another_anatomy_order_is_refused(tmp_path):
    _save(tmp_path / "m.pt", GU2Net([2, 2]), _anatomies("head", "hand"))
    loader = CheckedCheckpointLoader(str(tmp_path / "m.pt"), {"model": GU2Net([2, 2]), "anatomies": _anatomies("hand", "head")})
    with pytest.raises(ValueError, match="domains would be mixed up"):
        loader(Engine(lambda e, b: None))


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    net = GU2Net([2])
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 10
    good = {"model": net.state_dict(), "trainer": {"iteration": 30, "max_epochs": 10, "epoch_length": 10}}
    torch.save(good, tmp_path / "checkpoint_epoch=3.pt")
    (tmp_path / "checkpoint_epoch=4.pt").write_bytes(b"half a file")
    ResumeFromLatest(str(tmp_path), {"model": GU2Net([2]), "trainer": engine})(engine)
    assert engine.state.epoch == 3 and engine.state.iteration == 30
