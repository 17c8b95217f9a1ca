"""The fixed-domain deploy network, its ONNX export and the inference engines give the training network's answers."""

from __future__ import annotations

import io

import pytest
import torch

from scripts.deploy import DeployGU2Net, _FoldedStem, export_onnx, fold_batch_norm
from scripts.gu2net import GU2Net
from scripts.heatmaps import decode_heatmaps
from scripts.inferers import DeployInferer
from scripts.runtime import keep_freed_memory

SIZE = (64, 48)


def trained_like(out_channels: list[int], fusion: str = "cat") -> GU2Net:
    """A GU2Net whose batch norms hold non-trivial statistics, as after training (folding must matter), and
    whose heads are scaled up so that heatmaps have peaks rather than the near-flat maps of a fresh network."""
    torch.manual_seed(0)
    net = GU2Net(out_channels, fusion=fusion).eval()
    with torch.no_grad():
        for head in (net.local_net.head, net.global_net.head):
            for conv in head.convs:
                conv.weight.mul_(5.0)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return net


@pytest.fixture(scope="module")
def net() -> GU2Net:
    return trained_like([19, 37, 6])


def assert_same_answers(fast: torch.Tensor, ref: torch.Tensor) -> None:
    """Heatmaps within 1e-4 and the same decoded landmarks: the same peak pixel, sub-pixel within 1e-3 px.

    A random network's heatmaps can have two pixels within float rounding of the peak, where either is
    right; landmarks are compared where the reference's peak leads its runner-up by more than 1e-5
    (100x the rounding differences seen), which must be most of them.
    """
    assert fast.shape == ref.shape
    assert float((fast - ref).abs().max()) < 1e-4
    top = ref.flatten(2).topk(2, dim=2).values
    decided = (top[..., 0] - top[..., 1]) > 1e-5
    assert float(decided.float().mean()) > 0.8
    for a, b, keep in zip(fast, ref, decided):
        for method in ("argmax", "gaussian"):
            pa = decode_heatmaps(a, method)[0][keep]
            pb = decode_heatmaps(b, method)[0][keep]
            assert torch.equal(pa, pb) if method == "argmax" else float((pa - pb).abs().max()) < 1e-3


def test_fold_batch_norm_equals_conv_then_norm():
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2)
    norm.eval()
    w, b = fold_batch_norm(conv.weight, conv.bias, norm)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(torch.nn.functional.conv2d(x, w, b, padding=1), norm(conv(x)), atol=1e-5)


@pytest.mark.parametrize("domain,channels_last", [(0, True), (1, True), (2, False)])
def test_deploy_network_equals_the_training_network(net, domain, channels_last):
    fast = DeployGU2Net(net, domain, channels_last=channels_last)
    x = torch.randn(2, 1, *SIZE)
    with torch.no_grad():
        assert_same_answers(fast(x), net(x, domain))
    assert not any(p.requires_grad for p in fast.parameters())


def test_deploy_network_keeps_one_domain_only(net):
    fast = DeployGU2Net(net, 1)
    assert fast.out_channels == 37
    n_fast = sum(p.numel() for p in fast.parameters())
    assert n_fast < sum(p.numel() for p in net.parameters()) * 0.7  # the shared point-wise convs dominate


def test_folded_stem_equals_the_input_conv_then_the_first_separable_conv(net):
    x = torch.randn(2, 1, *SIZE)
    inc, first = net.local_net.inc.convs[1], net.local_net.enc[0].conv1
    with torch.no_grad():
        expected = first(inc(x), 1)
        got = _FoldedStem(inc, first, 1)(x)
    # everywhere, the border included (where the input conv's bias meets the depth-wise conv's zero padding)
    assert float((got - expected).abs().max()) < 1e-5
    assert float((got[..., 0, :] - expected[..., 0, :]).abs().max()) < 1e-5


def test_deploy_network_refuses_sizes_not_divisible_by_16(net):
    with pytest.raises(ValueError, match="divisible by 16"):
        DeployGU2Net(net, 0)(torch.randn(1, 1, 40, 32))


def test_add_fusion_deploys():
    net = trained_like([3], fusion="add")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(DeployGU2Net(net, 0)(x), net(x, 0), atol=1e-5)


def test_onnx_export_gives_the_same_heatmaps_and_landmarks(net, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "hand.onnx")
    export_onnx(net, 1, path, anatomy="hand")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["gu2net_anatomy"] == "hand"
    x = torch.randn(2, 1, 80, 64)  # not the export's example size: batch and spatial sizes are dynamic
    out = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        assert_same_answers(out, net(x, 1))


@pytest.mark.parametrize("engine", ["pytorch", "torchscript", "onnx"])
def test_inferer_engines_give_the_network_answers(net, engine):
    if engine == "onnx":
        pytest.importorskip("onnxruntime")
    inferer = DeployInferer(engine)
    x = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        assert_same_answers(inferer(x, net, domain=torch.tensor([2])), net(x, 2))


def test_onnx_engine_is_built_per_image_size_and_runs_a_batch(net):
    pytest.importorskip("onnxruntime")
    inferer = DeployInferer("onnx")
    with torch.no_grad():
        for size in (SIZE, (32, 80)):
            x = torch.randn(3, 1, *size)
            assert_same_answers(inferer(x, net, domain=0), net(x, 0))
    assert sorted(key[-1] for key in inferer._runners) == sorted([SIZE, (32, 80)])


def test_fixed_size_onnx_export_takes_its_size_only(net):
    ort = pytest.importorskip("onnxruntime")
    buffer = io.BytesIO()
    export_onnx(net, 0, buffer, example_size=SIZE, fixed_size=True)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 1, *SIZE]
    x = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        assert_same_answers(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), net(x, 0))


def test_inferer_rebuilds_after_the_weights_change():
    net = trained_like([4, 5])
    inferer = DeployInferer("pytorch")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        inferer(x, net, domain=0)
        net.global_net.head.convs[0].bias.add_(1.0)  # as an optimizer step or load_state_dict would
        assert torch.allclose(inferer(x, net, domain=0), net(x, 0), atol=1e-5)


def test_inferer_runs_exported_onnx_and_refuses_another_anatomy(net, tmp_path):
    pytest.importorskip("onnxruntime")
    path = str(tmp_path / "chest.onnx")
    export_onnx(net, 2, path, anatomy="chest")
    inferer = DeployInferer(exported_model=path)
    x = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        assert_same_answers(inferer(x, net, domain=2), net(x, 2))
    with pytest.raises(ValueError, match="chest"):
        inferer(x, net, domain=0)


def test_inferer_runs_exported_torchscript(net, tmp_path):
    path = str(tmp_path / "net.ts")
    torch.jit.save(torch.jit.script(net), path)
    inferer = DeployInferer(exported_model=path)
    x = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        assert_same_answers(inferer(x, net, domain=1), net(x, 1))


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="engine"):
        DeployInferer("tensorrt")


def test_keep_freed_memory_is_harmless():
    assert isinstance(keep_freed_memory(), bool)
    assert keep_freed_memory(enabled=False) is False
    big = torch.ones(1, 64, 512, 416)  # above glibc's mmap threshold
    assert float(big.sum()) == 64 * 512 * 416
