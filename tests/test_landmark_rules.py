"""The landmark and spacing rules every reader shares: each broken rule raises the caller's error, naming the place."""

import numpy as np
import pytest

from scripts.image_io import ImageHeader
from scripts.landmark_rules import NO_SPACING, as_points, check_landmarks, parse_spacing, resolve_spacing


class MyError(ValueError):
    pass


@pytest.mark.parametrize("value, pair", [(0.1, (0.1, 0.1)), ([0.1, 0.2], (0.1, 0.2)), (("0.3", "0.4"), (0.3, 0.4)), (np.float32(2), (2.0, 2.0))])
def test_spacing_is_a_number_or_a_pair(value, pair):
    assert parse_spacing(value, "here") == pytest.approx(pair)


@pytest.mark.parametrize("value", [0, -1, [0.1], [0.1, 0.2, 0.3], [0.1, float("inf")], [float("nan"), 1], "0.1", None, ["a", "b"]])
def test_bad_spacing_raises_the_callers_error_naming_the_place(value):
    with pytest.raises(MyError, match=r"^file\.json, item 3: spacing must be a positive number or two \[sx, sy\]"):
        parse_spacing(value, "file.json, item 3", MyError)


def test_spacing_order_item_then_dicom_then_anatomy_then_pixels():
    dicom = ImageHeader("a.dcm", (30, 40), (1.0, 1.0), 1, (0.4, 0.5), "PixelSpacing")
    plain = ImageHeader("a.png", (30, 40), (1.0, 1.0), 1)
    assert resolve_spacing([0.7, 0.9], dicom, (0.1, 0.1), "w") == ((0.7, 0.9), "datalist item")
    assert resolve_spacing(None, dicom, (0.1, 0.1), "w") == ((0.4, 0.5), "DICOM PixelSpacing")
    assert resolve_spacing(None, plain, (0.1, 0.2), "w") == ((0.1, 0.2), "anatomy")
    assert resolve_spacing(None, None, None, "w") == (None, NO_SPACING)
    with pytest.raises(MyError, match="^w: spacing"):
        resolve_spacing([0, 1], None, None, "w", MyError)


def test_valid_landmarks_come_back_as_pairs_with_nan_where_not_annotated():
    pts = check_landmarks([[0, 0], None, [29.4, 39.5]], 3, "w", image_size=(30, 40))
    assert pts.dtype == np.float64 and pts.shape == (3, 2)
    assert np.isnan(pts[1]).all() and pts[2].tolist() == [29.4, 39.5]


@pytest.mark.parametrize(
    "points, message",
    [
        ([[1, 2]], r"1 landmarks, but anatomy 'knee' has 2"),
        ([[1, 2, 3], [4, 5, 6]], r"landmarks must be a list of \[x, y\] pairs"),
        ([[1, 2], "ab"], r"landmarks must be a list of \[x, y\] pairs"),
        ([[1, 2], [np.inf, 3]], r"landmark coordinates must be finite \(found inf\)"),
        ([[1, np.nan], [3, 4]], r"landmark\(s\) \[1\] have only one coordinate"),
        ([None, [np.nan, np.nan]], r"every landmark is NaN/missing"),
        ([[1, 2], [29.6, 3]], r"landmark 2 at \(29\.60, 3\.00\) is outside the 30x40 image a\.png\."),
        ([[-0.6, 2], [3, 4]], r"landmark 1 at \(-0\.60, 2\.00\) is outside"),
        ([[1, 39.6], [3, 4]], r"landmark 1 at \(1\.00, 39\.60\) is outside"),
    ],
)
def test_each_broken_rule_raises_the_callers_error(points, message):
    with pytest.raises(MyError, match=r"^labels\.csv, line 3: " + message):
        check_landmarks(points, 2, "labels.csv, line 3", MyError, (30, 40), "a.png", owner="anatomy 'knee'")


def test_bounds_are_only_checked_with_an_image_size():
    assert check_landmarks([[500, 500]], 1, "w").tolist() == [[500, 500]]


def test_as_points_maps_null_to_nan():
    assert np.isnan(as_points([None, [1, 2]], "w")[0]).all()
