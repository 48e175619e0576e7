"""rcenp.checks: the argument checks of the losses, models, attacks and detector. Every bad value,
whatever its type, is one ValueError whose message starts with the argument's name (issue 14)."""
import fractions

import numpy as np
import pytest

from rcenp.checks import check_labels, check_positive, check_real, check_steps

NOT_REAL = [None, "0.5", True, False, np.True_, np.array(0.5), [0.5], 1 + 0j]
NOT_FINITE = [float("nan"), float("inf"), -float("inf"), np.float32("nan")]
BEYOND_FLOAT = [10 ** 400, -10 ** 400]  # finite ints that float() cannot hold (an integer count may be one)


@pytest.mark.parametrize("value", NOT_REAL + NOT_FINITE + BEYOND_FLOAT, ids=repr)
def test_check_real_raises_a_value_error_naming_the_argument(value):
    with pytest.raises(ValueError, match="^eps must be"):
        check_real("eps", value)


@pytest.mark.parametrize("value, expected", [(0.25, 0.25), (3, 3.0), (np.float32(0.5), 0.5), (np.int64(-2), -2.0),
                                             (fractions.Fraction(1, 4), 0.25)])
def test_check_real_accepts_real_numbers(value, expected):
    result = check_real("eps", value)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value, expected", [(float("inf"), float("inf")), (-float("inf"), -float("inf")),
                                             (10 ** 400, float("inf")), (-10 ** 400, -float("inf")), (0.5, 0.5)],
                         ids=repr)
def test_check_real_allows_infinity_only_when_asked_and_keeps_its_sign(value, expected):
    assert check_real("threshold", value, allow_infinite=True) == expected


@pytest.mark.parametrize("value", NOT_REAL + [float("nan"), np.float32("nan")], ids=repr)
def test_check_real_refuses_nan_and_non_numbers_even_with_infinity_allowed(value):
    with pytest.raises(ValueError, match="^threshold must be"):
        check_real("threshold", value, allow_infinite=True)


@pytest.mark.parametrize("value", NOT_REAL + NOT_FINITE + BEYOND_FLOAT + [0, 0.0, -0.1, 1.5], ids=repr)
def test_check_positive_raises_a_value_error_naming_the_argument(value):
    with pytest.raises(ValueError, match="^eps must be"):
        check_positive("eps", value, upper=1.0)


@pytest.mark.parametrize("value", NOT_REAL + NOT_FINITE + [0, -3, -10 ** 400, 2.5, 0.999, np.float64(1.5)],
                         ids=repr)
def test_check_steps_raises_a_value_error_naming_the_argument(value):
    with pytest.raises(ValueError, match="^steps must be"):
        check_steps("steps", value)


@pytest.mark.parametrize("value", [3, 3.0, np.int64(3), np.uint8(3), np.float32(3.0), fractions.Fraction(6, 2)],
                         ids=repr)
def test_check_steps_accepts_integral_real_numbers(value):
    result = check_steps("steps", value)
    assert result == 3 and type(result) is int


@pytest.mark.parametrize("labels, match", [
    (np.array([0, 1, 2]), r"^labels must have shape \(4,\), got \(3,\)"),
    (np.array([[0, 1], [2, 3]]), r"^labels must have shape \(4,\), got \(2, 2\)"),
    (np.array([0.0, 1.0, 2.0, 3.0]), "^labels must be integers, got dtype float64"),
    (np.array([True, False, True, False]), "^labels must be integers, got dtype bool"),
    (np.array([0, 1, 2, 10]), r"^labels must lie in \[0, 9\] for 10 classes, got values from 0 to 10"),
    (np.array([-1, 1, 2, 3]), r"^labels must lie in \[0, 9\] for 10 classes, got values from -1 to 3"),
    ([0, 1, 2], r"^labels must have shape \(4,\)"),
], ids=repr)
def test_check_labels_names_shape_dtype_and_range(labels, match):
    with pytest.raises(ValueError, match=match):
        check_labels("labels", labels, 4, 10)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.int32])
def test_check_labels_returns_int64_classes_on_the_labels_device(xp, dtype):
    result = check_labels("labels", xp.asarray([0, 9, 3, 3], dtype=dtype), 4, 10)
    assert isinstance(result, xp.ndarray) and result.dtype == xp.int64 and result.tolist() == [0, 9, 3, 3]


def test_check_labels_range_error_on_either_device(xp):
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 2\] for 3 classes, got values from 1 to 3"):
        check_labels("labels", xp.asarray([1, 3]), 2, 3)


def test_check_labels_takes_a_list_and_no_labels_for_no_images():
    assert check_labels("labels", [0, 9, 3, 3], 4, 10).tolist() == [0, 9, 3, 3]
    assert check_labels("labels", np.zeros(0, np.int64), 0, 10).shape == (0,)
