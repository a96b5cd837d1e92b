"""Synthetic-data quality measures on hand-made generations with known answers (right, wrong, copied,
ungrounded)."""

from __future__ import annotations

import random

import pytest

from mllm_da import toy
from mllm_da.synthesis.quality import (
    SynthesizedTask,
    answer_is,
    copied_from_caption,
    diversity,
    entropy_bits,
    format_quality_table,
    grounding,
    quality_report,
    question_form,
    toy_truth,
)

# a two-object toy scene, captioned as the toy domain captions it
SCENE = toy.ToyScene(
    toy.REFERENCE_SIZE,
    toy.BACKGROUND,
    (
        toy.ToyObject("circle", "red", "small", "top left", (0, 0, 0, 0), toy.BASE_RGB["red"]),
        toy.ToyObject("square", "blue", "large", "bottom right", (0, 0, 0, 0), toy.BASE_RGB["blue"]),
    ),
)
CAPTION = toy.describe_scene(SCENE)


def task(
    question: str, precise: str, informative: str = "", label: str | None = None, rid: str = "r"
) -> SynthesizedTask:
    return SynthesizedTask(rid, CAPTION, question, precise, informative or precise, label)


def test_toy_truth_answers_rule_questions_from_the_caption():
    assert toy_truth(CAPTION, "How many shapes are there?") == ("count", "two")
    assert toy_truth(CAPTION, "Is there a red circle?") == ("exist", "yes")
    assert toy_truth(CAPTION, "Is there a green triangle?") == ("exist", "no")  # not a rule hard negative
    assert toy_truth(CAPTION, "What colour is the shape at the top left?") == ("colour", "red")
    assert toy_truth(CAPTION, "Where is the blue square?\nA. top left\nB. bottom right") == ("position", "bottom right")
    assert toy_truth(CAPTION, "What is the meaning of life?") is None
    assert toy_truth("A photo of a dog.", "How many shapes are there?") is None


@pytest.mark.parametrize(
    ("answer", "truth", "question", "right"),
    [
        ("two", "two", "", True),
        ("2", "two", "", True),
        ("Two.", "two", "", True),
        ("three", "two", "", False),
        ("Yes, there is.", "yes", "", True),
        ("No", "yes", "", False),
        ("B", "bottom right", "Where?\nA. top left\nB. bottom right", True),
        ("A", "bottom right", "Where?\nA. top left\nB. bottom right", False),
    ],
)
def test_answer_is_reads_letters_digits_and_yes_no(answer: str, truth: str, question: str, right: bool):
    assert answer_is(answer, truth, question) is right


def test_correctness_and_the_filter_against_the_truth():
    tasks = [
        task("How many shapes are there?", "two", "There are two shapes: a red circle and a blue square.", "yes"),
        task("How many shapes are there?", "three", "I count three shapes in the image.", "yes"),  # wrong, kept
        task("Is there a red circle?", "yes", "Yes, a small red circle is at the top left.", "no"),  # right, dropped
        task("Is there a green triangle?", "no", "No, there is no green triangle.", "yes"),
    ]
    report = quality_report(tasks)
    truth = report["toy_truth"]
    assert truth["precise_accuracy"] == 0.75 and truth["informative_consistency"] == 0.75
    assert truth["per_type"]["count"] == {"tasks": 2, "precise_accuracy": 0.5, "informative_consistency": 0.5}
    # kept: 3, of which right 2 → precision 2/3; right: 3, of which kept 2 → recall 2/3
    assert truth["filter"] == {"keep_precision": 0.6667, "keep_recall": 0.6667, "kept": 3, "right": 3}
    assert report["diversity"]["type_counts"] == {"count": 2, "exist": 2}


def test_diversity_of_a_degenerate_set_is_zero_and_of_a_balanced_one_is_maximal():
    same = diversity(["How many shapes are there?"] * 10, ["count"] * 10)
    assert same["distinct_questions"] == 1 and same["type_entropy_bits"] == 0 and same["largest_type_share"] == 1
    assert str(same["type_entropy_bits"]) == "0.0"  # printed in the log's table: no "-0.0"
    mixed = diversity([f"Question {i}?" for i in range(4)], ["a", "b", "c", "d"])
    assert mixed["distinct_question_share"] == 1 and mixed["type_entropy_bits"] == pytest.approx(2.0)
    assert entropy_bits({}) == 0


def test_copying_from_the_caption_is_counted_for_phrases_not_single_words():
    caption = "An astronaut in a white spacesuit poses in front of an American flag."
    assert copied_from_caption("a white spacesuit", caption)
    assert not copied_from_caption("white", caption)  # a one-word answer is not a copy
    assert not copied_from_caption("a blue spacesuit", caption)
    tasks = [SynthesizedTask("r", caption, "What is the astronaut wearing?", "a white spacesuit", caption)]
    assert quality_report(tasks)["copied"] == {"precise_share": 1.0, "informative_share": 1.0}


def test_grounding_is_zero_for_a_synthesizer_that_ignores_the_image():
    original = {f"r{i}": (f"Q{i}?", f"A{i}") for i in range(10)}
    assert grounding(original, dict(original))["changed_share"] == 0.0
    blind = {k: (q, a if i % 2 else "other") for i, (k, (q, a)) in enumerate(original.items())}
    assert grounding(original, blind) == {"records": 10, "changed_share": 0.5, "question_changed_share": 0.0}


def test_question_forms_for_domains_without_a_truth():
    cases = {
        "How many cells are visible?": "count",
        "Is the lesion malignant?": "yes_no",
        "Where is the tumour?": "where",
        "Why is the tissue stained?": "why_how",
        "Describe the image.": "describe",
        "What organ is shown?": "what_which_who",
        "Which organ?\nA. liver\nB. lung": "choice",
        "Liver or lung": "other",
    }
    assert {q: question_form(q) for q in cases} == cases
    report = quality_report([SynthesizedTask("r", "A slide.", q, "x", "x") for q in cases])
    assert "toy_truth" not in report and report["diversity"]["type_entropy_bits"] == 3.0
    assert "distinct questions" in format_quality_table(report)


def test_rule_answers_of_toy_scenes_are_all_right():
    rng = random.Random(0)
    for _ in range(30):
        scene = toy.sample_scene(rng)
        caption = toy.describe_scene(scene)
        for rule in toy.rule_tasks(scene, rng, 5):
            truth = toy_truth(caption, rule.prompt)
            assert truth is not None and truth[0] == rule.question_type, rule.prompt
            assert answer_is(rule.answer, truth[1], rule.prompt), (rule.prompt, rule.answer, truth)


def test_a_yes_no_explanation_without_a_conclusion_is_undecided_not_wrong():
    from mllm_da.synthesis.quality import mentions

    assert mentions("The red circle is at the top left. So the answer is yes.", "yes") is True
    assert mentions("Yes at first sight, but no: it is blue.", "yes") is False  # its last word on it counts
    assert mentions("The red circle is at the top left.", "yes") is None
    report = quality_report([task("Is there a red circle?", "yes", "A small red circle is at the top left.")])
    assert report["toy_truth"]["informative_consistency"] is None
    assert report["toy_truth"]["informative_undecided"] == 1


def test_every_synthesis_reports_its_quality_in_the_summary(compose_cfg, tmp_path):
    import json

    from mllm_da.orchestration.synth import synthesize

    cfg = compose_cfg(
        [
            "synthesizer=rules",
            "domain.prepare.n_train=48",
            "domain.prepare.n_test=8",
            "domain.root=${paths.data_dir}/toy_small",
            "quality.blind_sample=16",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],  # its own cache: other tests count cache hits
        config_name="synth",
        output_dir=tmp_path / "run",
    )
    synthesize(cfg)
    quality = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]["quality"]
    assert quality["all"]["diversity"]["tasks"] == 48
    assert quality["all"]["toy_truth"]["precise_accuracy"] == 1.0  # rule answers are right by construction
    assert quality["grounding"] == {"records": 16, "changed_share": 0.0, "question_changed_share": 0.0}
    assert quality["kept"]["diversity"]["tasks"] <= 48


@pytest.mark.parametrize(
    ("informative", "consistent"),
    [
        ("There are two shapes: a small red circle and a large blue square. So there are two.", True),
        ("I see three shapes: a green triangle, a red circle and a blue square, so two.", False),  # another scene
        ("There are three shapes in the image, so the answer is two.", False),  # a wrong stated count
        ("There is no green triangle, only a red circle and a blue square: two shapes.", True),  # negated mention
        ("The image shows a purple square and a red circle: two.", False),
    ],
)
def test_an_informative_answer_must_describe_the_scene_it_was_asked_about(informative: str, consistent: bool):
    from mllm_da.synthesis.quality import informative_consistent, scene_claims_hold

    assert informative_consistent(informative, "two", CAPTION) is consistent
    assert scene_claims_hold(informative, SCENE) is consistent
    report = quality_report([task("How many shapes are there?", "two", informative)])
    assert report["toy_truth"]["informative_consistency"] == (1.0 if consistent else 0.0)
