"""Chapter 02: the official SQuAD v2 metric (loaded from the chapter's notebook) on hand-worked cases."""

import math

import pytest

from tools.nbexport import load
from utils.errors import CourseError

SQUAD = load("02-lora-gptj/01_lora_gptj_squad.ipynb")  # chapter 02's SQuAD code, from its notebook
NO_ANSWER = SQUAD.NO_ANSWER
answer_from_generation = SQUAD.answer_from_generation
exact_match = SQUAD.exact_match
f1_score = SQUAD.f1_score
normalize_answer = SQUAD.normalize_answer
squad_v2_scores = SQUAD.squad_v2_scores


@pytest.mark.parametrize(("text", "expected"), [
    ("The Grey Needle!", "grey needle"),  # lower case, punctuation and "the" removed
    ("  an   apple,  a pear ", "apple pear"),  # articles a/an removed, whitespace collapsed
    ("Theatre", "theatre"),  # "the" inside a word stays
    ("U.S.A.", "usa"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_is_the_best_over_gold_answers():
    assert exact_match("the Grey Needle", ["a lighthouse", "Grey Needle."]) == 1.0
    assert exact_match("Grey Needle tower", ["Grey Needle"]) == 0.0


def test_f1_hand_worked():
    # prediction "big red dog" vs gold "red dog house": 2 common tokens, precision 2/3, recall 2/3 -> F1 2/3
    assert f1_score("the big red dog", ["red dog house"]) == pytest.approx(2 / 3)
    # "Mara Tolland" inside a 4-token prediction: precision 2/4, recall 2/2 -> F1 = 2*0.5*1/1.5 = 2/3
    assert f1_score("built by Mara Tolland", ["Mara Tolland"]) == pytest.approx(2 / 3)
    # best over golds: the second gold matches exactly
    assert f1_score("1887", ["in 1887 by", "1887"]) == 1.0
    assert f1_score("Saturday", ["Sunday"]) == 0.0
    # repeated tokens count with multiplicity: common = min counts (dog 1, cat 1) = 2; precision 2/3, recall 2/3
    assert f1_score("dog dog cat", ["dog cat cat"]) == pytest.approx(2 / 3)


def test_no_answer_cases():
    assert exact_match("", []) == 1.0 and f1_score("", []) == 1.0  # right: no answer predicted
    assert exact_match("Mara Tolland", []) == 0.0 and f1_score("Mara Tolland", []) == 0.0
    assert exact_match("", ["Mara Tolland"]) == 0.0 and f1_score("", ["Mara Tolland"]) == 0.0
    # a gold answer that normalises to nothing counts as "no answer" (as in the official script)
    assert exact_match("", ["the"]) == 1.0
    # a prediction that normalises to nothing is "no answer"
    assert exact_match("The.", []) == 1.0


def test_answer_from_generation_maps_the_no_answer_phrase():
    assert answer_from_generation(f" {NO_ANSWER}") == ""
    assert answer_from_generation(" Answers not in context.\nmore") == ""
    assert answer_from_generation(" Mara Tolland\nquestion: who") == "Mara Tolland"
    assert answer_from_generation("   ") == ""


def _rec(rid, answers):
    return {"id": rid, "answers": {"text": answers, "answer_start": [0] * len(answers)}}


def test_squad_v2_scores_overall_hasans_noans():
    records = [_rec("a", ["Mara Tolland"]), _rec("b", ["41 meters", "41 m"]), _rec("c", []), _rec("d", [])]
    predictions = {"a": "Mara Tolland", "b": "41", "c": "", "d": "Mara"}
    scores = squad_v2_scores(predictions, records)
    # a: EM 1 F1 1; b: EM 0, F1 vs "41 meters" = 2*(1)(1/2)/(1.5) = 2/3, vs "41 m" also 2/3; c: 1, 1; d: 0, 0
    assert scores["HasAns"] == {"exact": 50.0, "f1": pytest.approx(100 * (1 + 2 / 3) / 2), "total": 2}
    assert scores["NoAns"] == {"exact": 50.0, "f1": 50.0, "total": 2}
    assert scores["overall"]["exact"] == 50.0
    assert scores["overall"]["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert scores["overall"]["total"] == 4


def test_squad_v2_scores_empty_group_is_nan_and_missing_prediction_fails():
    scores = squad_v2_scores({"a": "x"}, [_rec("a", ["x"])])
    assert scores["HasAns"]["exact"] == 100.0 and math.isnan(scores["NoAns"]["exact"])
    with pytest.raises(CourseError, match="no prediction .* first: b"):
        squad_v2_scores({"a": "x"}, [_rec("a", ["x"]), _rec("b", [])])
