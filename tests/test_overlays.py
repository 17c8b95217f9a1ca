"""Overlays: points coloured on a scale that turns at the review threshold, its legend, scaled-down pictures."""

import numpy as np
import pytest

from scripts.overlays import confidence_colour, overlay_image


def test_overlay_colours_each_point_by_its_confidence():
    img = overlay_image(np.zeros((1, 200, 100)), np.array([[50.0, 50.0], [150.0, 80.0]]), np.array([0.05, 0.95]))
    low, high = img.getpixel((50, 50)), img.getpixel((150, 80))  # PIL is (x, y): x = first array axis
    assert low[0] > 200 and low[1] < 60  # red: low confidence
    assert high[1] > 200 and high[0] < 60  # green: high confidence


@pytest.mark.parametrize(
    "confidence, threshold, colour",
    [
        (0.0, 0.3, (255, 0, 0)),  # red
        (0.15, 0.3, (255, 70, 0)),  # half way to orange
        (0.3, 0.3, (255, 230, 0)),  # yellow at the threshold
        (0.45, 0.3, (128, 225, 0)),  # half way to green
        (0.6, 0.3, (0, 220, 0)),  # green from twice the threshold
        (0.65, 0.3, (0, 220, 0)),
        (0.65, 0.5, (178, 227, 0)),  # another threshold: yellow to green between 0.5 and 1
        (float("nan"), 0.3, (160, 160, 160)),  # unknown: grey
    ],
)
def test_the_colour_scale_turns_at_the_threshold(confidence, threshold, colour):
    assert confidence_colour(confidence, threshold) == pytest.approx(colour, abs=1)


def test_below_the_threshold_is_never_yellow_or_green():
    below = [confidence_colour(c, 0.3) for c in np.linspace(0, 0.299, 30)]
    assert all(r == 255 and g <= 140 for r, g, _ in below)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_a_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold must lie in"):
        confidence_colour(0.5, threshold)


def test_the_legend_shows_the_scale_with_a_tick_at_the_threshold():
    img = overlay_image(np.zeros((1, 600, 400)), np.array([[300.0, 300.0]]), np.array([0.5]), threshold=0.4)
    row = [img.getpixel((x, 10)) for x in range(0, 300)]
    coloured = [x for x, p in enumerate(row) if p[0] > 200 and p[2] < 50]  # red, orange or yellow
    start = coloured[0]
    assert img.getpixel((start, 10))[:2] == (255, 0)  # the bar starts red (confidence 0)
    assert any(p == (255, 255, 255) for p in row)  # the white tick at the threshold
    assert img.getpixel((start + 1, 10)) != img.getpixel((start + 60, 10))


def test_a_picture_larger_than_max_size_is_scaled_down_with_its_points():
    img = overlay_image(np.zeros((1, 1000, 500)), np.array([[899.5, 99.5]]), np.array([0.9]), max_size=100)
    assert img.size == (100, 50)
    assert img.getpixel((90, 10))[1] > 200  # the green point, at (899.5 + 0.5) / 10 - 0.5 = 89.5
    assert overlay_image(np.zeros((1, 80, 64)), np.array([[1.0, 1.0]]), max_size=100).size == (80, 64)
