from __future__ import annotations

import pytest

from scheduler.grading import Grader, grade


@pytest.mark.parametrize(("answer", "reference", "grader", "score"), [
    ("Paris.", "paris", Grader.EXACT, 1.0),
    ("Paris is the capital.", "Paris", Grader.EXACT, 0.0),
    ("The capital of France is Paris.", "paris", Grader.CONTAINS, 1.0),
    ("Lyon", "Paris", Grader.CONTAINS, 0.0),
    ("2 + 2 = 4", "4", Grader.NUMERIC, 1.0),
    ("The answer is 1,234.", "1234", Grader.NUMERIC, 1.0),
    ("I think 5", "4", Grader.NUMERIC, 0.0),
    ("no number", "4", Grader.NUMERIC, 0.0),
    ("The answer is (B) because", "B", Grader.CHOICE, 1.0),
    ("A is wrong; the answer is C", "C", Grader.CHOICE, 0.0),  # the first letter given counts
])
def test_graders(answer: str, reference: str, grader: Grader, score: float) -> None:
    assert grade(answer, reference, grader) == score
