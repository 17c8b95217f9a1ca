"""bench/batchnorm_health.py: it finds the batch norms that the variance reaching them has fallen below eps."""

import os
import sys

import torch

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # after everything else
from batchnorm_health import running_variances, starved  # noqa: E402


def test_a_batch_norm_fed_a_vanishing_signal_is_found():
    from scripts.gu2net import GU2Net

    net = GU2Net([3, 5]).train()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        net.local_net.enc[4].conv2.pointwise.weight.mul_(1e-4)  # the bottleneck's conv, as a decay shrinks it
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0  # running statistics = this batch's, at once
        net(x, domain=1)
    variances = running_variances(net.state_dict())
    low = starved(variances)
    assert "local_net.enc.4.conv2.norm.1" in low  # the domain that ran, behind the shrunk conv
    assert "local_net.enc.4.conv2.norm.0" not in low  # domain 0 never ran: its running variance is still 1
    assert "local_net.enc.0.conv1.norm.1" not in low  # the first layer still sees the image
