"""GU2Net: the universal landmark network of "You Only Learn Once" (Zhu et al.).

One network serves several anatomies ("domains"). The local network is a U-Net whose every 3x3
convolution is depth-wise separable: a per-domain depth-wise 3x3 conv (cheap, domain specific)
followed by a 1x1 point-wise conv shared by all domains (the common knowledge). Batch norm, the
input conv and the output head are per domain. A per-domain dilated global network looks at a
x0.25 copy of the image and the local heatmap; the output is the product of the two heatmaps.

Per-domain modules live in ``nn.ModuleList`` s and are chosen by iterating with ``enumerate`` and
comparing with the domain index: the one form of dynamic module selection TorchScript can compile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GU2Net", "as_channels_last", "check_spatial_size", "resolve_domain"]


def check_spatial_size(x: torch.Tensor) -> None:
    """Refuse an image whose height or width is not divisible by 16 (the four poolings and upsamplings)."""
    if x.shape[-1] % 16 != 0 or x.shape[-2] % 16 != 0:
        raise ValueError("GU2Net: spatial size " + str(x.shape[-2:]) + " must be divisible by 16.")


def as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last memory format, with strides that say so even when it has one channel.

    With one channel the NCHW and channels_last layouts hold the same bytes, so
    ``x.contiguous(memory_format=torch.channels_last)`` returns an NCHW-strided image unchanged. The first
    convolution then writes its 64-channel output in NCHW and the next one copies it to channels_last, and
    again for the gradient in training. Restriding the one-channel view costs nothing and avoids both copies.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    if x.shape[1] == 1:
        x = x.as_strided(x.shape, [x.stride(0), 1, x.shape[3], 1])
    return x


def resolve_domain(domain: Union[int, torch.Tensor], num_domains: int) -> int:
    """Return the single domain index of a batch given as an int or a per-sample tensor.

    A batch must hold one anatomy: a tensor with differing values is an error, not a silent pick.
    """
    if isinstance(domain, torch.Tensor):
        flat = domain.reshape(-1)
        if flat.numel() == 0:
            raise ValueError("GU2Net: the domain tensor is empty.")
        first = int(flat[0].item())
        if bool((flat != first).any()):
            raise ValueError(
                "GU2Net: a batch must hold images of one anatomy (domain); got domains "
                + str(torch.unique(flat))
                + ". Group the batch by anatomy first."
            )
        index = first
    else:
        index = int(domain)
    if index < 0 or index >= num_domains:
        raise ValueError(
            "GU2Net: domain " + str(index) + " is out of range for a network with " + str(num_domains) + " domains."
        )
    return index


class DomainSeparableConv(nn.Module):
    """Per-domain 3x3 depth-wise conv -> shared 1x1 point-wise conv -> per-domain BN -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, num_domains: int) -> None:
        super().__init__()
        self.depthwise = nn.ModuleList(
            [nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels) for _ in range(num_domains)]
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.norm = nn.ModuleList([nn.BatchNorm2d(out_channels) for _ in range(num_domains)])

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        y = x
        for i, conv in enumerate(self.depthwise):
            if i == domain:
                y = conv(x)
        return self._norm_act(self.pointwise(y), domain)

    def forward_cat(self, first: torch.Tensor, second: torch.Tensor, domain: int) -> torch.Tensor:
        """``forward(torch.cat([first, second], 1), domain)`` without building the concatenation.

        The depth-wise conv acts per channel and the point-wise conv sums over channels, so the conv of a
        concatenation is one conv per part, summed. In training this is cheaper than the concatenation: its
        gradient comes back as channel slices, which channels_last convolutions and the upsampling each copy
        to a contiguous map first (a full-resolution copy per decoder level, forward and backward).
        """
        s = first.shape[1]
        a, b = first, second
        for i, conv in enumerate(self.depthwise):
            if i == domain:  # padding 1: the 3 x 3 depth-wise conv of __init__
                bias = conv.bias
                bias_a: torch.Tensor | None = None
                bias_b: torch.Tensor | None = None
                if bias is not None:
                    bias_a, bias_b = bias[:s], bias[s:]
                a = F.conv2d(first, conv.weight[:s], bias_a, padding=1, groups=s)
                b = F.conv2d(second, conv.weight[s:], bias_b, padding=1, groups=second.shape[1])
        w = self.pointwise.weight
        return self._norm_act(F.conv2d(a, w[:, :s], self.pointwise.bias) + F.conv2d(b, w[:, s:]), domain)

    def _norm_act(self, y: torch.Tensor, domain: int) -> torch.Tensor:
        out = y
        for i, norm in enumerate(self.norm):
            if i == domain:
                out = norm(y)
        return F.leaky_relu(out, 0.01, inplace=True)  # in place: one full-resolution map less per layer


class DoubleConv(nn.Module):
    """Two domain separable convs: ``in -> mid -> out``."""

    def __init__(self, in_channels: int, out_channels: int, num_domains: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.conv1 = DomainSeparableConv(in_channels, mid, num_domains)
        self.conv2 = DomainSeparableConv(mid, out_channels, num_domains)

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.conv2(self.conv1(x, domain), domain)

    def forward_cat(self, first: torch.Tensor, second: torch.Tensor, domain: int) -> torch.Tensor:
        """``forward(torch.cat([first, second], 1), domain)`` without building the concatenation."""
        return self.conv2(self.conv1.forward_cat(first, second, domain), domain)


class PerDomainConv(nn.Module):
    """A plain convolution with one set of weights per domain (in/out channels may differ per domain)."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], kernel_size: int = 1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(i, o, kernel_size, padding=kernel_size // 2) for i, o in zip(in_channels, out_channels)]
        )

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        out = x
        for i, conv in enumerate(self.convs):
            if i == domain:
                out = conv(x)
        return out


class LocalNet(nn.Module):
    """The depth-wise separable U-Net (widths 64-128-256-512-512, bilinear up, skip concatenation)."""

    def __init__(self, in_channels: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        t = len(out_channels)
        self.inc = PerDomainConv([in_channels] * t, [64] * t)
        self.enc = nn.ModuleList(
            [
                DoubleConv(64, 64, t),
                DoubleConv(64, 128, t),
                DoubleConv(128, 256, t),
                DoubleConv(256, 512, t),
                DoubleConv(512, 512, t),
            ]
        )
        # decoder input = upsampled deeper features + skip; the first conv halves the channels
        self.dec = nn.ModuleList(
            [
                DoubleConv(1024, 256, t, mid_channels=512),
                DoubleConv(512, 128, t, mid_channels=256),
                DoubleConv(256, 64, t, mid_channels=128),
                DoubleConv(128, 64, t, mid_channels=64),
            ]
        )
        self.head = PerDomainConv([64] * t, list(out_channels))

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        x = self.inc(x, domain)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.enc):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x, domain)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for block in self.dec:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = block.forward_cat(skip, x, domain)
        return self.head(x, domain)


class GlobalNet(nn.Module):
    """Per-domain dilated network on a x0.25 view of the image and the local heatmap."""

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int],
        fusion: str = "cat",
        width: int = 128,
        dilations: Sequence[int] = (1, 2, 5, 2, 1),
        scale: float = 0.25,
    ) -> None:
        super().__init__()
        if fusion not in ("cat", "add"):
            raise ValueError(f"GU2Net: fusion must be 'cat' or 'add', got {fusion!r}.")
        t = len(out_channels)
        branch = width // 2 if fusion == "cat" else width
        self.fusion = fusion
        self.scale = scale
        self.image_conv = PerDomainConv([in_channels] * t, [branch] * t, 3)
        self.heatmap_conv = PerDomainConv(list(out_channels), [branch] * t, 3)
        self.dilated = nn.ModuleList(
            [
                nn.Sequential(
                    *[
                        nn.Sequential(nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.BatchNorm2d(width), nn.ReLU(True))
                        for d in dilations
                    ]
                )
                for _ in range(t)
            ]
        )
        self.head = PerDomainConv([width] * t, list(out_channels))

    def forward(self, image: torch.Tensor, local: torch.Tensor, domain: int) -> torch.Tensor:
        size = image.shape[-2:]
        small_image = F.interpolate(image, scale_factor=self.scale, mode="nearest")
        small_local = F.interpolate(local, scale_factor=self.scale, mode="nearest")
        a = self.image_conv(small_image, domain)
        b = self.heatmap_conv(small_local, domain)
        x = torch.cat([a, b], dim=1) if self.fusion == "cat" else a + b
        out = x
        for i, convs in enumerate(self.dilated):
            if i == domain:
                out = convs(x)
        out = self.head(out, domain)
        return F.interpolate(out, size=size, mode="nearest")


class GU2Net(nn.Module):
    """Global universal U-Net for landmark detection on several anatomies at once.

    Args:
        out_channels: landmark count of each domain, in domain order (e.g. ``[19, 37, 6]``).
        in_channels: image channels (1 for X-rays).
        fusion: how the global network fuses image and heatmap features, ``"cat"`` or ``"add"``.

    ``forward(x, domain=0)`` returns the final heatmap in (0, 1), shape ``(B, out_channels[domain], *x.shape[2:])``.
    Spatial sizes must be divisible by 16 (four poolings). ``domain`` is an int or a per-sample tensor whose
    values are all equal (a batch holds one anatomy).

    Example::

        net = GU2Net([19, 37, 6])
        heatmap = net(torch.randn(2, 1, 512, 416), domain=1)  # (2, 37, 512, 416)
    """

    def __init__(self, out_channels: Sequence[int], in_channels: int = 1, fusion: str = "cat") -> None:
        super().__init__()
        out_channels = [int(c) for c in out_channels]
        if not out_channels or min(out_channels) < 1:
            raise ValueError(f"GU2Net: out_channels must list at least one positive landmark count, got {out_channels}.")
        self.out_channels = out_channels
        self.num_domains = len(out_channels)
        self.local_net = LocalNet(in_channels, out_channels)
        self.global_net = GlobalNet(in_channels, out_channels, fusion=fusion)

    def forward(self, x: torch.Tensor, domain: Union[int, torch.Tensor] = 0) -> torch.Tensor:
        d = resolve_domain(domain, self.num_domains)
        check_spatial_size(x)
        if self._channels_last():
            x = as_channels_last(x)
        local = torch.sigmoid(self.local_net(x, d))
        global_ = torch.sigmoid(self.global_net(x, local, d))
        return local * global_

    def _channels_last(self) -> bool:
        """Whether the weights are in channels_last (``net.to(memory_format=torch.channels_last)``).

        A 1 x 1 weight with several input channels is the one whose strides tell the two formats apart.
        """
        w = self.local_net.enc[0].conv1.pointwise.weight
        return w.stride(3) > w.stride(1)
