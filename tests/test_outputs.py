"""What runs write: overlays coloured by confidence."""

import numpy as np

from scripts.outputs import overlay_image


def test_overlay_colours_each_point_by_its_confidence():
    img = overlay_image(np.zeros((1, 200, 100)), np.array([[50.0, 50.0], [150.0, 80.0]]), np.array([0.05, 0.95]))
    low, high = img.getpixel((50, 50)), img.getpixel((150, 80))  # PIL is (x, y): x = first array axis
    assert low[0] > 200 and low[1] < 60  # red: low confidence
    assert high[1] > 200 and high[0] < 60  # green: high confidence
    assert img.getpixel((5, 5)) != (0, 0, 0) or img.getpixel((10, 4)) != (0, 0, 0)  # the legend's bar
