"""Calibration option names that are not text are one clear error, not a ``TypeError`` from sorting them
(issue 29, item 5: found by the ``--metadata`` fuzz test; a YAML study file reads an unquoted ``on`` or
``false`` key as a boolean)."""

from __future__ import annotations

import pytest

from lm_eval_calib.options import CalibrationOptions


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({False: 1, "": 2}, r"calibration option name False \(bool\) is not text"),
        ({1: 2, "n_bins": 3}, r"calibration option name 1 \(int\) is not text"),
        ({None: 1}, r"calibration option name None \(NoneType\) is not text"),
        ({"": 2, "zz": 1, "n_bins": 5}, r"unknown calibration option\(s\) '', 'zz' in --metadata"),
    ],
)
def test_option_names_that_are_not_text_are_named(raw, message):
    with pytest.raises(ValueError, match=message) as info:
        CalibrationOptions.from_metadata({"calibration": raw})
    assert "known options: n_bins" in str(info.value)
