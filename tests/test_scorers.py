"""Hand-checked cases for the benchmark scorers (reference §5.3), one or more per quirk.

Expected values are worked out by hand in the comments, never by calling the function under test.
Tests that need the released label files read them from ``$ADAMLLM_LABELS_DIR`` (default
``/work/shared/data/adamllm-labels``) and are skipped when the files are absent.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest

from mllm_da.evaluation.labels import (
    ChoiceLabels,
    MultiLabelSpace,
    food101_labels,
    foodseg103_labels,
    label_names_to_ids,
    nutrition5k_labels,
)
from mllm_da.evaluation.normalization import CONTRACTIONS, normalize, word_counts
from mllm_da.evaluation.scorers import (
    SCORERS,
    aggregate,
    closed_hit,
    multi_label_f1,
    multi_label_recall,
    multiple_choice_accuracy,
    open_recall,
    parse_multi_label,
    parse_multiple_choice,
    rouge_l_f,
    score_predictions,
)

LABELS_DIR = Path(os.environ.get("ADAMLLM_LABELS_DIR", "/work/shared/data/adamllm-labels"))
NUTRITION5K = LABELS_DIR / "nutrition5k_ingredients.json"
FOODSEG103 = LABELS_DIR / "foodseg103_id2label.json"
FOOD101 = LABELS_DIR / "food101_name_to_label.json"


def _load(path: Path):
    if not path.exists():
        pytest.skip(f"label file {path} not found (set ADAMLLM_LABELS_DIR to the adamllm-labels folder)")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ normalize


def test_punctuation_replaced_by_space_when_not_spaced_in_original():
    # "/" appears as " / " -> deleted; "-" never touches a space -> replaced by a space.
    assert normalize("x-ray / ct") == "x ray ct"


def test_punctuation_deleted_everywhere_when_spaced_anywhere_in_original():
    # The " - " makes EVERY "-" deleted, including the one inside "x-ray".
    assert normalize("x-ray - ct") == "xray ct"


def test_digit_comma_digit_deletes_all_punctuation():
    # "1,5" matches (\d)(,)(\d): every mark is deleted, so "x-ray" -> "xray" and "1,5" -> "15".
    assert normalize("x-ray 1,5") == "xray 15"
    # Without a digit-comma-digit, an unspaced comma becomes a space.
    assert normalize("fever,cough") == "fever cough"


def test_period_rule_and_32_limit():
    # 40 periods none followed by a digit: only the first 32 are deleted (re.UNICODE == 32 as count) -> 8 left.
    assert normalize("." * 40) == "." * 8
    # A second pass removes the remaining 8.
    assert normalize(normalize("." * 40)) == ""
    # A decimal keeps its period; a trailing period goes.
    assert normalize("3.5") == "3.5"
    assert normalize("3.5.") == "3.5"
    assert normalize("end.") == "end"


def test_number_words_and_articles():
    # "the" dropped, "two" -> "2"; upper case is lowered in the split step.
    assert normalize("the two lesions") == "2 lesions"
    assert normalize("none") == "0"
    assert normalize("An Apple") == "apple"
    assert normalize("ten a one") == "10 1"


def test_contractions():
    assert normalize("dont know") == "don't know"
    assert normalize("isnt thats") == "isn't that's"
    # Capitalised keys of the table ("Im") can never match: words are lower-cased first.
    assert normalize("Im") == "im"
    # The apostrophe is not in the punctuation list.
    assert normalize("don't") == "don't"
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # kept verbatim, reversed entry


def test_word_counts_is_a_bag():
    assert word_counts("  Lung lung mass ") == {"lung": 2, "mass": 1}


# ------------------------------------------------------------------------------------------------ OPEN / CLOSED


def test_open_recall_exact_and_case():
    # c = {left:1, lung:1}, r = same -> tp = 2, fn = 0 -> 1.0
    assert open_recall("Left lung", "left lung") == 1.0


def test_open_recall_repeated_word_gets_more_credit():
    # c = {lung:3}, r = {lung:1, mass:1}: tp = c[lung] = 3 (not min = 1), fn = r[mass] = 1 -> 3/4
    assert open_recall("lung lung lung", "lung mass") == pytest.approx(0.75)
    # single mention: tp = 1, fn = 1 -> 1/2
    assert open_recall("lung", "lung mass") == pytest.approx(0.5)


def test_open_recall_zero_rules():
    assert open_recall("", "lung") == 0.0  # c empty
    assert open_recall("lung", "") == 0.0  # r empty
    assert open_recall("the", "lung") == 0.0  # prediction is only an article -> empty after normalising
    assert open_recall("heart", "lung") == 0.0  # tp == 0


def test_open_recall_normalises_twice():
    # "lung" + 40 periods: 1st pass leaves "lung........", the 2nd pass removes the last 8 -> "lung" == label.
    assert open_recall("lung" + "." * 40, "lung") == 1.0
    # numbers words are mapped on both sides: "two" -> "2"
    assert open_recall("two", "2") == 1.0


def test_closed_hit_basic():
    assert closed_hit("Yes", "yes") == 1.0
    assert closed_hit("maybe", "yes") == 0.0  # neither "yes" nor "no" in the prediction
    assert closed_hit("no", "yes") == 0.0  # "no" present but label "yes" is not a substring


def test_closed_hit_no_substring_quirk():
    # "no" is a substring of "not", "normal", "nodule".
    assert closed_hit("not sure", "no") == 1.0
    assert closed_hit("normal", "no") == 1.0
    assert closed_hit("it is a nodule", "no") == 1.0
    # "normal" contains "no", but the label "yes" is not in it -> miss
    assert closed_hit("the lungs look normal", "yes") == 0.0


def test_closed_hit_normalises_once():
    # label "no"+40 periods -> "no........" after ONE pass, which is not inside "no" -> miss
    # (a second pass, as OPEN gets, would have made it "no" and a hit).
    assert closed_hit("no", "no" + "." * 40) == 0.0


# ------------------------------------------------------------------------------------------------ multiple choice

PMC = {"A": "pneumonia", "B": "pleural effusion", "C": "normal", "D": "cardiomegaly"}


def test_mc_bracketed():
    assert parse_multiple_choice("(B)", PMC, 0) == ("B", False)
    # Two bracketed candidates: (C) occurs further right -> C
    assert parse_multiple_choice("The answer is (A) not (C)", PMC, 0) == ("C", False)
    # A bracketed match wins over a spaced one even if the spaced one is later
    assert parse_multiple_choice("(A) is wrong, B is right", PMC, 0) == ("A", False)


def test_mc_spaced():
    assert parse_multiple_choice("B", PMC, 0) == ("B", False)  # padded " B "
    # " B " and " C " both occur; C's rfind is larger -> C
    assert parse_multiple_choice("I choose B or C", PMC, 0) == ("C", False)
    # Spaced matching is case-sensitive: lower-case "a" is not choice A
    assert parse_multiple_choice("it is a cardiomegaly", PMC, 0) == ("D", False)


def test_mc_strip_order():
    # strip(".") removes the trailing period -> " B " matches
    assert parse_multiple_choice("B.", PMC, 0) == ("B", False)
    # "B.,": strip(",") then strip(".") -> "B" -> matches
    assert parse_multiple_choice("B.,", PMC, 0) == ("B", False)
    # "B,.": strip(",") does nothing (ends with "."), strip(".") leaves "B," -> " B, " has no " B ",
    # and its padded length is 4 (<= 5) so there is no content match -> random fallback
    choice, rnd = parse_multiple_choice("B,.", PMC, 0)
    assert rnd is True
    assert choice == random.Random(0).choice(["A", "B", "C", "D"])


def test_mc_content_match_and_rfind():
    assert parse_multiple_choice("It looks like pleural effusion", PMC, 0) == ("B", False)
    # both A and D texts occur; D ("cardiomegaly") occurs further right -> D
    assert parse_multiple_choice("pneumonia rather than cardiomegaly", PMC, 0) == ("D", False)


def test_mc_content_tie_goes_to_first_choice():
    # " a red blood cell ": rfind("red") == rfind("red blood cell") == 3 -> tie -> first in choice order
    assert parse_multiple_choice("a red blood cell", {"A": "red", "B": "red blood cell"}, 0) == ("A", False)
    assert parse_multiple_choice("a red blood cell", {"A": "red blood cell", "B": "red"}, 0) == ("A", False)
    # no tie: the last "red" is further right than "red blood cell" -> "red"
    assert parse_multiple_choice("red blood cell, then red", {"A": "red blood cell", "B": "red"}, 0) == (
        "B",
        False,
    )


def test_mc_content_needs_padded_length_over_5():
    opts = {"A": "rib", "B": "skull"}
    # " rib " is 5 characters -> no content match -> random
    assert parse_multiple_choice("rib", opts, 3)[1] is True
    # " ribs " is 6 characters -> content match "rib"
    assert parse_multiple_choice("ribs", opts, 3) == ("A", False)


def test_mc_random_fallback_is_deterministic_by_row_index():
    choices = ["A", "B", "C", "D"]
    for idx in range(10):
        choice, rnd = parse_multiple_choice("no idea", PMC, idx)
        assert rnd is True
        assert choice == random.Random(idx).choice(choices)
        assert parse_multiple_choice("no idea", PMC, idx) == (choice, True)  # same row -> same pick
    # Different rows are seeded differently: over "ABCD", Random(0) picks D and Random(1) picks B.
    assert parse_multiple_choice("no idea", PMC, 0) == ("D", True)
    assert parse_multiple_choice("no idea", PMC, 1) == ("B", True)


FOOD_SMALL = {"apple_pie": 0, "baby_back_ribs": 1, "baklava": 2, "beef_carpaccio": 3}


def test_food101_labels_shape():
    labels = food101_labels(FOOD_SMALL)
    assert dict(labels.options) == {
        "0": "apple pie",
        "1": "baby back ribs",
        "2": "baklava",
        "3": "beef carpaccio",
    }
    assert labels.label_to_choice["apple pie"] == "0"
    assert labels.label_to_choice["baby_back_ribs"] == "1"


def test_food101_numbers_match_before_names():
    opts = food101_labels(FOOD_SMALL).options
    # no number: content match on "apple pie" -> "0"
    assert parse_multiple_choice("This looks like apple pie", opts, 0) == ("0", False)
    # " 3 " is a spaced choice, found before any class name is tried -> "3" (beef carpaccio)
    assert parse_multiple_choice("This is apple pie, about 3 slices", opts, 0) == ("3", False)


def test_food101_real_file():
    labels = food101_labels(_load(FOOD101))
    assert len(labels.options) == 101
    assert list(labels.options)[:2] == ["0", "1"] and labels.options["0"] == "apple pie"
    # " 1 " is choice "1" (baby back ribs), so the named apple pie is never considered
    assert parse_multiple_choice("apple pie, 1 slice", labels.options, 0) == ("1", False)
    row = {"label": "apple pie"}
    assert SCORERS["multiple_choice"].score_row("It is apple pie", row, 0, labels)["score"] == 1.0
    assert SCORERS["multiple_choice"].score_row("It is apple pie, 1 slice", row, 0, labels)["score"] == 0.0


def test_multiple_choice_accuracy():
    # parsed: A (hit), B vs gold C (miss), C (hit) -> 2/3 * 100
    acc = multiple_choice_accuracy(["(A)", "B", "(C) maybe"], ["A", "C", "C"], PMC)
    assert acc == pytest.approx(200 / 3)
    assert math.isnan(multiple_choice_accuracy([], [], PMC))


# ------------------------------------------------------------------------------------------------ multi-label


def test_multi_label_longest_first_and_delete_every_occurrence():
    names = ["rice", "fried rice", "egg"]
    # "fried rice" (10 chars) first -> id 1, deleted; "rice" is then gone; "egg" -> id 2
    assert parse_multi_label("Fried rice with egg", names) == [1, 2]
    # every occurrence of "rice" is deleted, so "ice" cannot match inside the second "rice"
    assert parse_multi_label("rice rice", ["rice", "ice"]) == [0]


def test_multi_label_stable_for_equal_lengths():
    # "pear" and "plum" have equal length: visited in id order, not text order
    assert parse_multi_label("plum and pear", {0: "pear", 1: "plum"}) == [0, 1]
    assert parse_multi_label("plum and pear", {5: "plum", 2: "pear"}) == [5, 2]


def test_foodseg103_real_file():
    space = foodseg103_labels(_load(FOODSEG103))
    assert sorted(space.class_names) == list(range(1, 103))  # 0 background and 103 other ingredients dropped
    # "egg tart" (id 2) and "eggplant" (id 69) both 8 chars, id order; "egg" (24) is gone afterwards
    assert parse_multi_label("egg tart and eggplant", space.class_names) == [2, 69]
    # the file's "French beans" (id 96) is matched lower-cased; "green beans" is id 95
    assert parse_multi_label("French beans with green beans", space.class_names) == [96, 95]


def test_nutrition5k_duplicate_quirk_real_file():
    ingredients = _load(NUTRITION5K)
    space = nutrition5k_labels(ingredients)
    assert len(ingredients) == 555 and space.num_classes == 555
    dup = [i for i, name in enumerate(ingredients) if name == "deprecated"]
    assert dup == [230, 452, 457, 469]
    # gold side: LAST index; parser side: FIRST index -> never a hit
    assert label_names_to_ids(["deprecated"], space) == [469]
    assert parse_multi_label("deprecated", space.class_names) == [230]
    score = SCORERS["multi_label_recall"].score_row("deprecated", {"label": ["deprecated"]}, 0, space)
    assert score["score"] == 0.0  # y_true has 469, y_pred has 230: tp 0, fn 1 -> recall 0


def test_nutrition5k_longest_first_real_file():
    space = nutrition5k_labels(_load(NUTRITION5K))
    assert parse_multi_label("fried rice", space.class_names) == [193]  # not also "rice" (481)
    assert parse_multi_label("licorice", space.class_names) == [430]  # "rice" inside "licorice" consumed
    # label ids: fried rice 193, broccoli 26, chicken 27; prediction hits 193 and 26: tp 2, fn 1 -> 2/3
    row = {"label": ["fried rice", "broccoli", "chicken"]}
    score = SCORERS["multi_label_recall"].score_row("fried rice and broccoli", row, 0, space)
    assert score["score"] == pytest.approx(2 / 3)


def test_multi_label_f1_recall_zero_division():
    # empty label and empty prediction -> 1.0 for both (zero_division=1)
    assert multi_label_f1([], [], 10) == 1.0
    assert multi_label_recall([], [], 10) == 1.0
    # empty label, non-empty prediction: recall 0/0 -> 1; F1: tp 0, fp 1 -> 0
    assert multi_label_recall([3], [], 10) == 1.0
    assert multi_label_f1([3], [], 10) == 0.0


def test_multi_label_f1_recall_values():
    # pred {1,2}, gold {2,3}: tp 1, fp 1, fn 1 -> P = R = 0.5 -> F1 0.5
    assert multi_label_f1([1, 2], [2, 3], 10) == pytest.approx(0.5)
    assert multi_label_recall([1, 2], [2, 3], 10) == pytest.approx(0.5)
    # pred {2}, gold {2,3}: P 1, R 0.5 -> F1 2/3
    assert multi_label_f1([2], [2, 3], 10) == pytest.approx(2 / 3)
    # ids outside first_id..first_id+num_classes-1 are ignored: both vectors empty -> 1.0
    assert multi_label_f1([0], [0], 3, first_id=1) == 1.0


def test_label_names_to_ids_unknown_raises():
    space = MultiLabelSpace(class_names={0: "a"}, name_to_id={"a": 0}, first_id=0, num_classes=1)
    with pytest.raises(KeyError):
        label_names_to_ids(["b"], space)
    with pytest.raises(TypeError):
        label_names_to_ids("a", space)


# ------------------------------------------------------------------------------------------------ ROUGE-L


def test_rouge_l_known_pairs():
    # words counted as sets: pred {fry, the, onions} n=3, ref {fry, onions, slowly} m=3,
    # LCS "fry onions" = 2 -> P = R = 2/3 -> F = 2*P*R/(P+R+1e-8)
    p = r = 2 / 3
    assert rouge_l_f("fry the onions", "fry onions slowly") == pytest.approx(2 * p * r / (p + r + 1e-8))
    # set quirk: "the cat sat on the mat" vs "the cat is on the mat": n = m = 5 distinct words,
    # LCS "the cat on the mat" as a set is {the, cat, on, mat} = 4 -> P = R = 0.8
    assert rouge_l_f("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8)


def test_rouge_l_errors_score_zero():
    assert rouge_l_f("", "boil the pasta") == 0.0  # "Hypothesis is empty."
    assert rouge_l_f("...", "boil the pasta") == 0.0  # punctuation-only: empty after sentence split
    assert rouge_l_f("boil the pasta", "") == 0.0  # "Reference is empty."


# ------------------------------------------------------------------------------------------------ aggregation


def test_vqa_aggregate():
    rows = [
        {"answer_type": "OPEN", "label": "lung mass"},
        {"answer_type": "OPEN", "label": "lung"},
        {"answer_type": "CLOSED", "label": "yes"},
        {"answer_type": "CLOSED", "label": "no"},
        {"answer_type": "open", "label": "x"},  # neither OPEN nor CLOSED: counted nowhere
    ]
    preds = ["lung lung lung", "heart", "yes", "maybe", "x"]
    per_row, numbers = score_predictions("vqa_open_closed", preds, rows)
    # OPEN: 0.75 and 0.0 -> mean 0.375 -> 37.5; CLOSED: 1 and 0 -> 50.0
    assert numbers == pytest.approx({"open_recall": 37.5, "closed_accuracy": 50.0})
    assert per_row[4] == {"open": False, "closed": False, "score": 0.0}


def test_vqa_aggregate_missing_types():
    only_closed = [SCORERS["vqa_open_closed"].score_row("yes", {"answer_type": "CLOSED", "label": "yes"}, 0, None)]
    out = aggregate("vqa_open_closed", only_closed)
    assert math.isnan(out["open_recall"])  # no OPEN row: the reference divides by zero
    assert out["closed_accuracy"] == 100.0
    only_open = [SCORERS["vqa_open_closed"].score_row("lung", {"answer_type": "OPEN", "label": "lung"}, 0, None)]
    out = aggregate("vqa_open_closed", only_open)
    assert out == {"open_recall": 100.0, "closed_accuracy": 0.0}  # no CLOSED row -> 0.0


def test_pmc_vqa_rows_and_random_flag():
    rows = [dict(PMC, label="B"), dict(PMC, label="A"), dict(PMC, label="C")]
    preds = ["(B)", "pleural effusion", "no idea"]
    per_row, numbers = score_predictions("multiple_choice", preds, rows, row_indices=[10, 11, 12])
    assert per_row[0] == {"score": 1.0, "random_selected": False}
    assert per_row[1] == {"score": 0.0, "random_selected": False}  # parsed B, gold A
    # row 3 falls back to Random(12).choice("ABCD")
    expected_hit = 1.0 if random.Random(12).choice(["A", "B", "C", "D"]) == "C" else 0.0
    assert per_row[2] == {"score": expected_hit, "random_selected": True}
    assert numbers["accuracy"] == pytest.approx((100.0 + 0.0 + 100.0 * expected_hit) / 3)
    assert numbers["random_selected_pct"] == pytest.approx(100 / 3)


def test_food101_through_registry_with_choice_labels():
    labels = food101_labels(FOOD_SMALL)
    assert isinstance(labels, ChoiceLabels)
    rows = [{"label": "baklava"}, {"label": "apple pie"}]
    _, numbers = score_predictions("multiple_choice", ["baklava!", "apple pie, 2 of them"], rows, labels)
    # row 1: content "baklava" -> "2" == gold "2"; row 2: " 2 " -> "2" != gold "0" -> 50%
    assert numbers["accuracy"] == pytest.approx(50.0)


def test_multi_label_and_rouge_aggregates():
    space = MultiLabelSpace(
        class_names={1: "rice", 2: "fried rice", 3: "egg"},
        name_to_id={"rice": 1, "fried rice": 2, "egg": 3},
        first_id=1,
        num_classes=3,
    )
    rows = [{"label": ["fried rice"]}, {"label": []}]
    # row 1: pred {2} == gold {2} -> F1 1; row 2: pred {3}, gold {} -> F1 0 -> mean 50
    _, f1 = score_predictions("multi_label_f1", ["fried rice", "egg"], rows, space)
    assert f1 == pytest.approx({"f1": 50.0})
    # recall: row 1 -> 1, row 2 -> 0/0 -> 1 -> 100
    _, rec = score_predictions("multi_label_recall", ["fried rice", "egg"], rows, space)
    assert rec == pytest.approx({"recall": 100.0})
    _, rl = score_predictions("rouge_l", ["", "boil pasta"], [{"label": "boil pasta"}, {"label": "boil pasta"}])
    # 0 (empty) and 1.0 (identical: F = 2*1*1/(2+1e-8)) -> mean * 100
    assert rl["rouge_l_f"] == pytest.approx(50.0)
    assert math.isnan(aggregate("rouge_l", [])["rouge_l_f"])


def test_registry_names():
    assert set(SCORERS) == {
        "vqa_open_closed",
        "multiple_choice",
        "multi_label_f1",
        "multi_label_recall",
        "rouge_l",
    }
    assert SCORERS["multi_label_f1"].needs_labels and not SCORERS["rouge_l"].needs_labels
    with pytest.raises(TypeError):
        SCORERS["multi_label_f1"].score_row("egg", {"label": ["egg"]}, 0, None)
