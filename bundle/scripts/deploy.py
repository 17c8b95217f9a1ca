"""Fast inference for one anatomy: a trained GU2Net folded into a fixed-domain network.

Inference never changes the domain inside a batch and never updates batch-norm statistics, so the
training network's generality costs time for nothing there. :class:`DeployGU2Net` is built from a
trained :class:`~scripts.gu2net.GU2Net` and one domain index and keeps only that domain's branches,
with every batch norm folded into the convolution before it, the depth-wise bias folded into the
point-wise bias and the input conv folded into the first separable conv (:class:`_FoldedStem`). In
PyTorch it runs in ``channels_last`` memory format, where oneDNN's depth-wise and 1x1 convolutions are
faster on CPU than in NCHW. The result is the same function (float rounding
aside) with a plain ``forward(x)`` that TorchScript freezes and ONNX exports directly (:func:`export_onnx`).
"""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gu2net import DomainSeparableConv, GU2Net, as_channels_last, check_spatial_size, resolve_domain

__all__ = ["DeployGU2Net", "fold_batch_norm", "export_onnx", "read_onnx_domain"]


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(conv(x))`` as one convolution (``norm`` in eval mode, i.e. running statistics)."""
    var = norm.running_var if norm.running_var is not None else torch.ones(norm.num_features)
    mean = norm.running_mean if norm.running_mean is not None else torch.zeros(norm.num_features)
    gamma = norm.weight if norm.weight is not None else torch.ones(norm.num_features)
    beta = norm.bias if norm.bias is not None else torch.zeros(norm.num_features)
    scale = gamma / torch.sqrt(var + norm.eps)
    b = bias if bias is not None else torch.zeros_like(mean)
    w = weight * scale.reshape([-1] + [1] * (weight.ndim - 1))
    return w, (b - mean) * scale + beta


def _conv(weight: torch.Tensor, bias: torch.Tensor | None, source: nn.Conv2d, groups: int = 1) -> nn.Conv2d:
    """An ``nn.Conv2d`` like ``source`` (padding, dilation) holding the given weight and bias."""
    out_c, in_c_per_group = weight.shape[:2]
    conv = nn.Conv2d(
        in_c_per_group * groups,
        out_c,
        weight.shape[-2:],
        padding=source.padding,
        dilation=source.dilation,
        groups=groups,
        bias=bias is not None,
    )
    conv.weight.data.copy_(weight.detach())
    if bias is not None:
        conv.bias.data.copy_(bias.detach())
    return conv


def _copy(conv: nn.Conv2d) -> nn.Conv2d:
    """A detached copy of ``conv`` (its weight, bias, padding and dilation)."""
    return _conv(conv.weight, conv.bias, conv, groups=conv.groups)


def _folded_pointwise(block: DomainSeparableConv, domain: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-wise weight and bias of one domain's separable conv, its BN and depth-wise bias folded in."""
    dw, pw = block.depthwise[domain], block.pointwise
    bias = pw.bias if pw.bias is not None else torch.zeros(pw.out_channels, device=pw.weight.device)
    if dw.bias is not None:  # pw(dw(x) + b_dw) = pw(dw(x)) + W_pw @ b_dw
        bias = bias + pw.weight.flatten(1) @ dw.bias
    return fold_batch_norm(pw.weight, bias, block.norm[domain])


class _SeparableAct(nn.Module):
    """One domain's separable conv: bias-free depth-wise 3x3 -> point-wise 1x1 (BN folded) -> LeakyReLU."""

    def __init__(self, block: DomainSeparableConv, domain: int) -> None:
        super().__init__()
        dw = block.depthwise[domain]
        self.depthwise = _conv(dw.weight, None, dw, groups=dw.groups)
        self.pointwise = _conv(*_folded_pointwise(block, domain), block.pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu_(self.pointwise(self.depthwise(x)), 0.01)


def _double(block: nn.Module, domain: int) -> nn.Sequential:
    """One domain's double conv (``conv1`` then ``conv2``), each separable conv folded."""
    return nn.Sequential(_SeparableAct(block.conv1, domain), _SeparableAct(block.conv2, domain))


class _FoldedStem(nn.Module):
    """One domain's input conv and first separable conv as a single 3x3 conv, then LeakyReLU.

    The 1x1 input conv (``A x + b``), the depth-wise 3x3 (``k_c``) and the point-wise conv (``W``, BN folded,
    bias ``e``) are all linear, so ``W (k_c * (A x + b)) + e`` is one 3x3 conv of ``x`` with kernels
    ``K[o, j] = sum_c W[o, c] A[c, j] k_c``. The bias term is a 3x3 conv too, of an image of ones: the
    depth-wise conv pads the input conv's output with zeros, not with ``b``, so it differs at the border.
    Convolving ``[x, 1]`` gives both terms exactly, and the two 64-channel full-resolution maps in between
    are never written.
    """

    def __init__(self, inc: nn.Conv2d, first: DomainSeparableConv, domain: int) -> None:
        super().__init__()
        a = inc.weight.flatten(1)  # (mid, in)
        b = inc.bias if inc.bias is not None else torch.zeros(a.shape[0], device=a.device)
        k = first.depthwise[domain].weight[:, 0]  # (mid, 3, 3)
        w, e = _folded_pointwise(first, domain)  # the depth-wise bias is in e
        w = w.flatten(1)  # (out, mid)
        kernel = torch.einsum("oc,cj,cuv->ojuv", w, a, k)
        kernel_ones = torch.einsum("oc,c,cuv->ouv", w, b, k)[:, None]
        self.conv = _conv(torch.cat([kernel, kernel_ones], 1), e, first.depthwise[domain])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu_(self.conv(torch.cat([x, torch.ones_like(x[:, :1])], 1)), 0.01)


class DeployGU2Net(nn.Module):
    """The GU2Net of one domain, for inference only: ``forward(x)`` returns the final heatmap.

    Args:
        net: a trained GU2Net (its weights are copied; later changes to ``net`` are not seen).
        domain: the anatomy's domain index.
        channels_last: run in channels_last memory format (faster on CPU and on GPUs with AMP).

    Example::

        fast = DeployGU2Net(net, domain=0).eval()
        heatmap = fast(torch.randn(1, 1, 512, 416))  # the same as net(x, 0), float rounding aside
    """

    def __init__(self, net: GU2Net, domain: int, channels_last: bool = True) -> None:
        super().__init__()
        d = resolve_domain(domain, net.num_domains)
        self.domain = d
        self.out_channels = net.out_channels[d]
        self.channels_last = channels_last
        local, glob = net.local_net, net.global_net
        with torch.no_grad():
            # the input conv and the first separable conv are one conv (the stem); the first block keeps its second
            self.stem = _FoldedStem(local.inc.convs[d], local.enc[0].conv1, d)
            self.enc = nn.ModuleList(
                [nn.Sequential(_SeparableAct(local.enc[0].conv2, d))] + [_double(b, d) for b in local.enc[1:]]
            )
            self.dec = nn.ModuleList([_double(b, d) for b in local.dec])
            self.local_head = _copy(local.head.convs[d])
            self.fusion, self.scale = glob.fusion, glob.scale
            self.image_conv = _copy(glob.image_conv.convs[d])
            self.heatmap_conv = _copy(glob.heatmap_conv.convs[d])
            dilated = []
            for conv, norm, _ in glob.dilated[d]:
                dilated += [_conv(*fold_batch_norm(conv.weight, conv.bias, norm), conv), nn.ReLU(inplace=True)]
            self.dilated = nn.Sequential(*dilated)
            self.global_head = _copy(glob.head.convs[d])
        self.to(device=next(net.parameters()).device)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_size(x)
        if self.channels_last:
            x = as_channels_last(x)
        # local network
        y = self.stem(x)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.enc):
            if i > 0:
                y = F.max_pool2d(y, 2)
            y = block(y)
            skips.append(y)
        skips.pop()
        # upsampling by constant factors (exact: sizes are divisible by 16), not to the skip's size: with constant
        # scales ONNX Runtime keeps the upsampling and the concatenation in its blocked NCHWc layout instead of
        # reordering to NCHW and back around them
        for block in self.dec:
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=True)
            y = block(torch.cat([skips.pop(), y], dim=1))
        local = torch.sigmoid(self.local_head(y))
        # global network
        a = self.image_conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))
        b = self.heatmap_conv(F.interpolate(local, scale_factor=self.scale, mode="nearest"))
        g = torch.cat([a, b], dim=1) if self.fusion == "cat" else a + b
        g = self.global_head(self.dilated(g))
        global_ = torch.sigmoid(F.interpolate(g, scale_factor=1.0 / self.scale, mode="nearest"))
        return local * global_


# metadata keys of an exported ONNX model: which domain (and anatomy) it was built for
ONNX_DOMAIN_KEY = "gu2net_domain"
ONNX_ANATOMY_KEY = "gu2net_anatomy"


def export_onnx(
    net: GU2Net,
    domain: int,
    f: Union[str, BinaryIO],
    anatomy: str = "",
    example_size: tuple[int, int] = (64, 64),
    opset_version: int = 17,
    fixed_size: bool = False,
) -> None:
    """Write the ONNX model of one domain of ``net`` (batch norm folded) to a path or a binary file object.

    Batch and spatial sizes are dynamic (spatial sizes must still be divisible by 16), unless ``fixed_size``:
    then the model takes one image of ``example_size`` (H, W) only, which lets ONNX Runtime plan every layer
    for that size (what :class:`~scripts.inferers.DeployInferer` builds, as workflows resize each anatomy to
    one size).
    The domain index and anatomy name are stored in the model's metadata, so that a runner can refuse images of
    another anatomy. Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no extra package.
    """
    import onnx

    model = DeployGU2Net(net, domain, channels_last=False).cpu()
    x = torch.zeros(1, net.local_net.inc.convs[model.domain].in_channels, *example_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=["heatmap"],
            dynamic_axes=None
            if fixed_size
            else {"image": {0: "batch", 2: "height", 3: "width"}, "heatmap": {0: "batch", 2: "height", 3: "width"}},
            opset_version=opset_version,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in ((ONNX_DOMAIN_KEY, str(model.domain)), (ONNX_ANATOMY_KEY, anatomy)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if isinstance(f, str):
        onnx.save(proto, f)
    else:
        f.write(proto.SerializeToString())


def read_onnx_domain(metadata: dict[str, str], source: str = "the ONNX model") -> tuple[int, str]:
    """The ``(domain, anatomy)`` that :func:`export_onnx` stored in a model's metadata."""
    if ONNX_DOMAIN_KEY not in metadata:
        raise ValueError(f"{source}: has no '{ONNX_DOMAIN_KEY}' metadata; export it with scripts.export_onnx.")
    return int(metadata[ONNX_DOMAIN_KEY]), metadata.get(ONNX_ANATOMY_KEY, "")
