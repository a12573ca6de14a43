"""The README check itself: it passes on a small score move and fails on a wrong label or a score beyond tolerance."""
from __future__ import annotations

import pytest

from tests.readme_claims import SCORE_TOLERANCE, first_shown_result, mismatches, stated_predictions

STATED = "Complex reasoning (0.73), Complex reasoning (0.69), Creative writing\n(0.78), Simple task (0.43)"


def test_stated_predictions_parse_across_line_breaks():
    assert stated_predictions(STATED) == [("Complex reasoning", 0.73), ("Complex reasoning", 0.69),
                                          ("Creative writing", 0.78), ("Simple task", 0.43)]
    with pytest.raises(ValueError):
        stated_predictions("Complex reasoning 0.73")


def test_a_score_moved_by_a_cpu_passes():
    answered = [("Complex reasoning", 0.7312), ("Complex reasoning", 0.7004), ("Creative writing", 0.7688),
                ("Simple task", 0.43)]
    assert mismatches(stated_predictions(STATED), answered) == []


def test_a_wrong_prediction_fails():
    answered = [("Complex reasoning", 0.73), ("Simple task", 0.69), ("Creative writing", 0.78), ("Simple task", 0.43)]
    assert mismatches(stated_predictions(STATED), answered) == ["#1: stated 'Complex reasoning', answered 'Simple task'"]


def test_a_score_beyond_the_tolerance_fails():
    off = 0.78 - SCORE_TOLERANCE - 0.002
    answered = [("Complex reasoning", 0.73), ("Complex reasoning", 0.69), ("Creative writing", off), ("Simple task", 0.43)]
    (problem,) = mismatches(stated_predictions(STATED), answered)
    assert problem.startswith("#2 'Creative writing': stated 0.78")
    assert mismatches(stated_predictions(STATED), answered[:3]) == ["4 stated, 3 answered"]


def test_the_first_shown_result_is_read_from_the_readme_json():
    text = 'It answers:\n{"data":[{"index":0,"prediction":"A","score":0.5,"predictions":[]},\n ...five more...]}'
    assert first_shown_result(text) == {"index": 0, "prediction": "A", "score": 0.5, "predictions": []}
