import pytest
import torch

from scripts.gu2net import DomainSeparableConv, GU2Net, as_channels_last


@pytest.fixture(scope="module")
def net() -> GU2Net:
    torch.manual_seed(0)
    return GU2Net([19, 37, 6]).eval()


def test_parameter_count_matches_the_paper(net):
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 4_381_052) / 4_381_052 <= 0.02, n
    assert n == 4_381_052


@pytest.mark.parametrize("domain,channels", [(0, 19), (1, 37), (2, 6)])
def test_output_shape_per_domain(net, domain, channels):
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        y = net(x, domain)
        y_tensor = net(x, torch.tensor([domain, domain]))
    assert y.shape == (2, channels, 64, 48)
    assert torch.equal(y, y_tensor)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_domains_use_their_own_depthwise_bn_and_heads_and_share_pointwise():
    torch.manual_seed(0)
    net = GU2Net([5, 7]).train()
    net(torch.randn(2, 1, 32, 32), domain=1).mean().backward()
    block = net.local_net.enc[2].conv1
    assert block.depthwise[0].weight.grad is None and block.depthwise[1].weight.grad.abs().sum() > 0
    assert block.norm[0].weight.grad is None and block.norm[1].weight.grad.abs().sum() > 0
    assert net.local_net.head.convs[0].weight.grad is None and net.local_net.head.convs[1].weight.grad.abs().sum() > 0
    assert net.global_net.head.convs[0].weight.grad is None
    assert block.pointwise.weight.grad.abs().sum() > 0  # shared: one module, trained by every domain
    assert not hasattr(block, "pointwise_0") and isinstance(block.pointwise, torch.nn.Conv2d)
    # running statistics move only for the domain that ran
    assert torch.equal(block.norm[0].running_mean, torch.zeros_like(block.norm[0].running_mean))
    assert not torch.equal(block.norm[1].running_mean, torch.zeros_like(block.norm[1].running_mean))


def test_conv_of_a_concatenation_without_building_it_is_exact_forward_and_backward():
    torch.manual_seed(0)
    split = DomainSeparableConv(12, 8, num_domains=2).train()
    whole = DomainSeparableConv(12, 8, num_domains=2).train()
    whole.load_state_dict(split.state_dict())
    first, second = torch.randn(2, 5, 16, 16), torch.randn(2, 7, 16, 16)
    target = torch.rand(2, 8, 16, 16)
    y_split = split.forward_cat(first, second, 1)
    y_whole = whole(torch.cat([first, second], 1), 1)
    assert torch.allclose(y_split, y_whole, atol=1e-5)
    ((y_split - target) ** 2).mean().backward()
    ((y_whole - target) ** 2).mean().backward()
    for (name, a), b in zip(split.named_parameters(), whole.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    assert torch.allclose(split.norm[1].running_var, whole.norm[1].running_var)


def test_one_channel_image_is_restrided_for_a_channels_last_network():
    x = torch.randn(2, 1, 32, 48)
    restrided = as_channels_last(x)
    assert torch.equal(restrided, x) and restrided.stride() == (32 * 48, 1, 48, 1)
    rgb = as_channels_last(torch.randn(2, 3, 32, 48)[:, :, ::2])  # several channels, not contiguous
    assert rgb.is_contiguous(memory_format=torch.channels_last)

    torch.manual_seed(0)
    nchw = GU2Net([3]).eval()
    fast = GU2Net([3]).eval()
    fast.load_state_dict(nchw.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    formats = []
    hook = lambda module, args, out: formats.append(out.stride(1) == 1)  # noqa: E731
    for model in (nchw, fast):
        model.local_net.inc.convs[0].register_forward_hook(hook)
    with torch.no_grad():
        expected = nchw(x)
        assert torch.allclose(fast(x), expected, atol=1e-5)
    # the first conv already writes channels_last when the weights are (no copy before the second conv)
    assert formats == [False, True]


def test_domains_give_different_outputs_for_the_same_image():
    torch.manual_seed(0)
    net = GU2Net([4, 4]).eval()
    for p in net.parameters():  # make the domains differ as after training
        p.data.add_(torch.randn_like(p) * 0.01)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net(x, 0), net(x, 1))


def test_torchscript_round_trip(net, tmp_path):
    scripted = torch.jit.script(net)
    path = tmp_path / "net.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        for d in (0, 1, 2):
            assert torch.allclose(loaded(x, d), net(x, d), atol=1e-6)


def test_bad_domain_and_mixed_batch_are_errors(net):
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError, match="out of range"):
        net(x, 3)
    with pytest.raises(ValueError, match="one anatomy"):
        net(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, 30, 32), 0)


def test_add_fusion_builds_and_runs():
    net = GU2Net([3], fusion="add").eval()
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="fusion"):
        GU2Net([3], fusion="mul")
