"""Test-time framing: an anatomy shown larger than in training is looked at again at its trained size, and the
landmarks come back in the given image's grid.

A synthetic network stands in for a trained one: each landmark is a bright dot; the network finds the dot nearest
each landmark's trained place exactly, but its confidence falls with the dot's distance from that place (a network
is sure only of an anatomy framed as in training). The training layout comes from a saved refiner, as in the
bundle, through :func:`network_layouts`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from scripts.checkpoints import CheckpointError
from scripts.durable import save_torch_atomic
from scripts.errors import BundleError
from scripts.mirroring import mean_peak
from scripts.refinement import LandmarkRefiner
from scripts.reframing import ReframeInferer, network_layouts, resample_view

W, H = 64, 80  # the network grid
FACTOR = 4
CENTRE = torch.tensor([32.0, 40.0])
LAYOUT = CENTRE + torch.tensor([[-14.0, -16.0], [13.0, -15.0], [-12.0, 14.0], [15.0, 16.0], [0.0, -22.0], [1.0, 21.0]])


def _dots(points: torch.Tensor) -> torch.Tensor:
    """A ``(1, 1, W, H)`` z-scored image: Gaussian dots (sigma 1.2 px) at ``points``."""
    xx, yy = torch.meshgrid(torch.arange(float(W)), torch.arange(float(H)), indexing="ij")
    img = torch.zeros(W, H)
    for x, y in points:
        img = torch.maximum(img, torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2)))
    return ((img - img.mean()) / img.std())[None, None]


def _peak(heatmap: torch.Tensor) -> torch.Tensor:
    """Sub-pixel peak of one ``(W, H)`` heatmap: the centre of mass of its 5 x 5 neighbourhood."""
    i = int(heatmap.argmax())
    x, y = i // heatmap.shape[1], i % heatmap.shape[1]
    xs, ys = slice(max(x - 2, 0), x + 3), slice(max(y - 2, 0), y + 3)
    win = heatmap[xs, ys].clamp_min(0)
    gx, gy = torch.meshgrid(torch.arange(xs.start, xs.start + win.shape[0]).float(), torch.arange(ys.start, ys.start + win.shape[1]).float(), indexing="ij")
    return torch.stack([(win * gx).sum(), (win * gy).sum()]) / win.sum()


class DotFinder:
    """An inferer: channel k peaks at the dot nearest LAYOUT[k], confidence exp(-(distance / 4 px)^2)."""

    def __init__(self) -> None:
        self.calls, self.batches = 0, []

    def __call__(self, x: torch.Tensor, network: nn.Module, domain=None) -> torch.Tensor:
        self.calls += 1
        self.batches.append((x.shape[0], None if domain is None else torch.as_tensor(domain).numel()))
        b = x.shape[0]
        xx, yy = torch.meshgrid(torch.arange(float(W)), torch.arange(float(H)), indexing="ij")
        out = torch.zeros(b, len(LAYOUT), W, H)
        for i in range(b):
            img = x[i, 0]
            local_max = (img == torch.nn.functional.max_pool2d(img[None, None], 5, 1, 2)[0, 0]) & (img > img.mean() + 2 * img.std())
            dots = torch.stack([_peak(img * (((xx - px) ** 2 + (yy - py) ** 2) <= 9)) for px, py in torch.nonzero(local_max).float()])
            for k, m in enumerate(LAYOUT):
                d = (dots - m).norm(dim=1)
                p = dots[int(d.argmin())]
                conf = math.exp(-((float(d.min()) / 4.0) ** 2))
                out[i, k] = conf * torch.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 2.0**2))
        return out


class OneDomain(nn.Module):
    num_domains = 1


@pytest.fixture
def refiner_path(tmp_path) -> str:
    """A refiner whose recorded training layout is LAYOUT (in its grid, FACTOR x the network's)."""
    refiner = LandmarkRefiner([len(LAYOUT)], factor=FACTOR, patch_size=16, features=(2, 2, 2, 2, 2, 2))
    refiner.accumulate_shapes(((LAYOUT + 0.5) * FACTOR - 0.5)[None])
    path = str(tmp_path / "refiner.pt")
    save_torch_atomic({"refiner": refiner.state_dict()}, path)
    return path


def _zoomed(zoom: float, shift=(0.0, 0.0)) -> torch.Tensor:
    """The layout as an image shows it zoomed ``zoom`` times about the centre and moved by ``shift``."""
    return CENTRE + zoom * (LAYOUT - CENTRE) + torch.tensor(shift)


def test_network_layouts_reads_the_refiners_record(refiner_path: str, tmp_path) -> None:
    layouts = network_layouts(refiner_path)
    assert set(layouts) == {0}
    assert torch.allclose(layouts[0], LAYOUT, atol=1e-4)
    assert network_layouts(str(tmp_path / "none.pt")) == {}
    # a file that is not a refiner, or is cut short, is an error naming it, not a silent single pass
    wrong = str(tmp_path / "model.pt")
    save_torch_atomic({"model": {}}, wrong)
    with pytest.raises(CheckpointError, match="model.pt: no 'refiner' state"):
        network_layouts(wrong)
    cut = str(tmp_path / "cut.pt")
    with open(refiner_path, "rb") as f, open(cut, "wb") as g:
        g.write(f.read()[:200])
    with pytest.raises(CheckpointError, match="cut.pt"):
        ReframeInferer(DotFinder(), cut)(_dots(LAYOUT), OneDomain(), domain=0)


def test_resample_view_moves_a_point_where_its_formula_says() -> None:
    x = _dots(torch.tensor([[40.0, 30.0]]))
    scale, source, target = torch.tensor([1.3]), torch.tensor([[40.0, 30.0]]), torch.tensor([[20.0, 50.0]])
    view = resample_view(x, scale, source, target)
    assert torch.allclose(_peak(view[0, 0]), target[0], atol=0.3)
    # and back: the inverse mapping returns the dot to its place
    back = resample_view(view, 1 / scale, target, source)
    assert torch.allclose(_peak(back[0, 0]), source[0], atol=0.3)


@pytest.mark.parametrize("zoom, shift", [(1.35, (0.0, 0.0)), (1.3, (3.0, -4.0)), (0.72, (-2.0, 3.0))])
def test_a_larger_or_smaller_anatomy_is_looked_at_again_and_mapped_back(refiner_path: str, zoom: float, shift) -> None:
    truth = _zoomed(zoom, shift)
    x = _dots(truth)
    finder = DotFinder()
    first = finder(x, OneDomain())
    reframer = ReframeInferer(finder, refiner_path)  # the default limits, 0.87 and 1.15
    out = reframer(x, OneDomain(), domain=torch.tensor([0]))
    assert finder.calls == 3 and reframer.reframed == 1 and reframer.kept == 1
    # the second look is at the trained size: far more confident than the first
    assert float(mean_peak(out)) > 0.9 > 2 * float(mean_peak(first))
    # and its landmarks are where the dots are in the given image's grid, each with its own identity
    found = torch.stack([_peak(h) for h in out[0]])
    assert torch.allclose(found, truth, atol=0.6), (found - truth).abs().max()


def test_in_a_batch_only_the_image_that_needs_it_is_looked_at_again(refiner_path: str) -> None:
    truth = _zoomed(1.35)
    x = torch.cat([_dots(truth), _dots(LAYOUT)])
    finder = DotFinder()
    out = ReframeInferer(finder, refiner_path)(x, OneDomain(), domain=torch.tensor([0, 0]))
    assert finder.batches == [(2, 2), (1, 1)]  # the second pass gets the one image and its domain
    assert torch.equal(out[1], DotFinder()(x[1:], OneDomain())[0])
    assert torch.allclose(torch.stack([_peak(h) for h in out[0]]), truth, atol=0.6)


def test_an_anatomy_at_its_trained_size_is_left_alone(refiner_path: str) -> None:
    for zoom, limits in ((1.05, (0.87, 1.15)), (0.72, (0.0, 1.15))):  # within the limits: one pass
        x = _dots(_zoomed(zoom, (2.0, 1.0)))
        finder = DotFinder()
        reframer = ReframeInferer(finder, refiner_path, limits=limits)
        out = reframer(x, OneDomain(), domain=0)
        assert finder.calls == 1 and reframer.reframed == 0
        assert torch.equal(out, DotFinder()(x, OneDomain()))


def test_disabled_or_without_a_refiner_one_pass(refiner_path: str, tmp_path) -> None:
    x = _dots(_zoomed(1.35))
    for reframer in (ReframeInferer(DotFinder(), refiner_path, enabled="false"), ReframeInferer(DotFinder(), str(tmp_path / "no.pt"))):
        out = reframer(x, OneDomain(), domain=0)
        assert reframer.inferer.calls == 1 and reframer.reframed == 0
        assert torch.equal(out, DotFinder()(x, OneDomain()))


def test_bad_settings_are_refused(refiner_path: str) -> None:
    with pytest.raises(ValueError, match="limits"):
        ReframeInferer(DotFinder(), refiner_path, limits=(1.2, 1.5))
    with pytest.raises(BundleError, match="--reframe"):
        ReframeInferer(DotFinder(), refiner_path, enabled="maybe")
