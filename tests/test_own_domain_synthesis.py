"""Synthesis on a user's own domain: the toy-tuned synthesizer is refused there, with the options to use."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm_da.config_checks import ConfigError, check_synth_config


@pytest.mark.parametrize("domain", ["custom", "biomed"])
def test_a_toy_seed_synthesizer_is_refused_on_another_domain_naming_the_options(compose_cfg, domain: str):
    cfg = compose_cfg([f"domain={domain}"], config_name="synth")
    with pytest.raises(ConfigError) as caught:
        check_synth_config(cfg)
    message = str(caught.value)
    for option in (
        "synthesizer=adamllm",
        "seed_data.source=visionflan",
        "synthesizer=rules",
        "seed_data.allow_on_other_domains=true",
    ):
        assert option in message


def test_the_refusal_is_lifted_by_the_options_it_names(compose_cfg, tmp_path):
    for overrides in (
        ["synthesizer=rules"],
        ["seed_data.allow_on_other_domains=true"],
        [f"synthesizer.checkpoint={tmp_path}"],
        ["domain=toy"],
    ):
        check_synth_config(compose_cfg(["domain=custom", *overrides], config_name="synth"))


def test_each_option_the_refusal_names_is_accepted_and_every_toy_tuned_preset_refused(compose_cfg, tmp_path):
    flan = tmp_path / "visionflan"
    (flan / "images").mkdir(parents=True)
    for name in ("ALLaVA-Caption-VFLAN-4V.json", "metadata.json", "ALLaVA-Instruct-VFLAN-4V.json"):
        (flan / name).write_text("[]")
    for overrides in (["synthesizer=adamllm"], ["seed_data.source=visionflan", f"seed_data.visionflan.root={flan}"]):
        check_synth_config(compose_cfg(["domain=custom", *overrides], config_name="synth"))
    with pytest.raises(ConfigError, match="toy seed set"):
        check_synth_config(compose_cfg(["domain=custom", "synthesizer=tiny_qwen2_vl"], config_name="synth"))


def test_train_with_data_mix_synthetic_on_a_custom_domain_is_refused_before_training(compose_cfg, tmp_path):
    from mllm_da.orchestration.train import train
    from tests.test_custom_domain import _csv

    root = tmp_path / "mine"
    _csv(root)
    cfg = compose_cfg(["domain=custom", f"domain.root={root}", "data_mix=synthetic"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="toy seed set"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_synth_summary_counts_input_records_read_kept_and_rejected_by_reason(compose_cfg, tmp_path):
    import json

    from mllm_da.orchestration.synth import synthesize
    from tests.test_custom_domain import _csv

    root = tmp_path / "mine"
    _csv(root)
    with open(root / "captions.csv", "a", encoding="utf-8") as handle:
        handle.write("missing.png,A caption of a picture that is not there.\n")
        handle.write("photo_0.png,A second caption of the first picture.\n")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    with open(root / "captions.csv", "a", encoding="utf-8") as handle:
        handle.write("broken.png,A picture that does not decode.\n")
    cfg = compose_cfg(
        ["domain=custom", f"domain.root={root}", "synthesizer=rules"], config_name="synth", output_dir=tmp_path / "run"
    )
    synthesize(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["domain"]["captions"]["reasons"] == {"missing_image": 1}
    read = summary["data"]["image_caption_pairs"]
    # the missing image is refused while converting the CSV (the domain's own count); the undecodable one here
    assert (read["read"], read["kept"], read["rejected"]) == (8, 7, 1)
    assert read["reasons"] == {"bad_image": 1}
    assert read["rejects_path"] and "broken.png" in Path(read["rejects_path"]).read_text(encoding="utf-8")

    # the dashboards find the converted captions and their pictures (the toy truth is unknown here)
    from mllm_da.dashboards.samples import RunFolder, synth_rows

    rows = synth_rows(RunFolder.open(tmp_path / "run"), 4)
    assert len(rows) == 4
    for row in rows:
        assert row["caption"] and Path(row["image"]).is_file() and Path(row["image"]).parent == root / "images"
        assert row["toy_truth"] is None and row["precise_right"] is None


def test_evaluate_summary_counts_benchmark_rows_read_kept_and_refused(compose_cfg, tmp_path):
    import json

    from mllm_da.orchestration.evaluate import evaluate
    from tests.test_custom_domain import BENCHMARK_ROWS, _benchmark, _csv

    root = tmp_path / "mine"
    _csv(root)
    _benchmark(root, [*BENCHMARK_ROWS, {"image": "bench/a.png", "question": "Q?", "answer": "x", "answer_type": "?"}])
    (root / "bench" / "c.png").write_bytes(b"not a png")
    with open(root / "benchmark.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"image": "bench/c.png", "question": "Q?", "answer": "x"}) + "\n")
    cfg = compose_cfg(
        ["domain=custom", f"domain.root={root}", "bad_rows=skip"], config_name="evaluate", output_dir=tmp_path / "run"
    )
    evaluate(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["domain"]["benchmark"]["reasons"] == {"bad_answer_type": 1}  # refused while reading the file
    assert summary["data"]["custom_vqa"] == {"read": 5, "kept": 4, "rejected": 1, "reasons": {"bad_image": 1}}
    assert summary["data"]["custom_mc"] == {"read": 2, "kept": 2, "rejected": 0, "reasons": {}}


# ------------------------------------------------------------------------ the rule synthesizer on real captions

#: every template each caption supports, with the answer a reader would give: whole phrases of the caption
REAL_CAPTIONS: dict[str, dict[str, str]] = {
    "An astronaut in a white spacesuit poses in front of an American flag.": {
        "What does the image show?": "An astronaut",
        "Where is the astronaut?": "in front of an American flag",
        "What does the astronaut do?": "poses in front of an American flag",
        "What colour is the spacesuit?": "white",
    },
    "A cup of coffee with latte art on a wooden table.": {
        "What does the image show?": "A cup of coffee",
        "Where is the cup of coffee?": "on a wooden table",
    },
    "Chelsea the cat lying on a rug, looking at the camera.": {
        "What does the image show?": "Chelsea the cat",
        "Where is Chelsea the cat?": "on a rug",
        "What is Chelsea the cat doing?": "lying on a rug",
    },
    "Rocket on the launch pad at dawn.": {
        "What does the image show?": "Rocket",
        "Where is the rocket?": "on the launch pad",
    },
    # an -ing noun is not the action, and an opening is not the subject
    "A building on a hill under a cloudy sky.": {
        "What does the image show?": "A building",
        "Where is the building?": "on a hill",
    },
    "There is a dog running on the beach.": {
        "What does the image show?": "a dog",
        "What is the dog doing?": "running on the beach",
        "Where is the dog?": "on the beach",
    },
    "The image shows a red car parked near a building.": {
        "What does the image show?": "a red car",
        "How is the red car shown?": "parked near a building",
        "Where is the red car?": "near a building",
        "What colour is the car?": "red",
    },
    # "showing"-like verbs: what it shows, and where that is
    "This is a chest X-ray showing a small nodule in the right lung.": {
        "What does the image show?": "a chest X-ray",
        "What does the chest X-ray show?": "a small nodule in the right lung",
        "Where is the small nodule?": "in the right lung",
    },
    "Axial CT image showing a hypodense lesion (arrow) in the right lobe of the liver.": {
        "What does the image show?": "Axial CT image",
        "What does the axial CT image show?": "a hypodense lesion",
    },
    "A white and blue boat in the harbor.": {
        "What does the image show?": "A white and blue boat",
        "Where is the white and blue boat?": "in the harbor",
        "What colour is the boat?": "white and blue",
    },
    "Two black cats sleeping on a sofa.": {
        "What does the image show?": "Two black cats",
        "Where are the two black cats?": "on a sofa",
        "What are the two black cats doing?": "sleeping on a sofa",
        "What colour are the cats?": "black",
        "How many black cats are there?": "two",
    },
}
#: a precise answer cut mid-phrase ends on one of these ("poses in", "in front of an", "near a")
DANGLING = {"a", "an", "the", "in", "on", "of", "at", "with", "to", "and", "front", "from", "by", "near", "under"}


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[A-Za-z0-9'-]+", text.lower())


def _is_whole_phrase_of(answer: str, caption: str) -> bool:
    words, caption_words = _words(answer), _words(caption)
    contiguous = any(caption_words[i : i + len(words)] == words for i in range(len(caption_words)))
    return bool(words) and contiguous and words[-1] not in DANGLING


@pytest.mark.parametrize("caption", sorted(REAL_CAPTIONS))
def test_each_template_a_caption_supports_is_answered_by_a_whole_phrase(caption: str):
    import random

    from mllm_da.synthesis.rules import caption_tasks

    tasks = caption_tasks(caption, random.Random(0), questions=10)
    assert {question: precise for question, precise, _ in tasks} == REAL_CAPTIONS[caption]
    for question, precise, informative in tasks:
        assert _is_whole_phrase_of(precise, caption), (question, precise)
        assert precise.lower() in informative.lower() and informative == caption  # the whole caption sentence


@pytest.mark.parametrize("questions", [1, 2, 3, 5])
def test_rule_output_honours_questions_and_parses_into_the_expected_triplets(questions: int):
    from mllm_da.synthesis.parse import INFORMATIVE_HINT, PRECISE_HINT, extract_triplet, parse_output
    from mllm_da.synthesis.rules import rule_output

    for i, (caption, expected) in enumerate(REAL_CAPTIONS.items()):
        pairs = parse_output(rule_output(f"r{i}", caption, questions))
        hinted = [(*pair.question.split("\n", 1), pair.answer) for pair in pairs]
        asked = {question for _, question, _ in hinted}
        assert len(asked) == min(questions, len(expected)) and asked <= set(expected)
        assert len(hinted) == 2 * len(asked)  # each question asked twice: once per hint
        for hint, question, answer in hinted:
            if hint == PRECISE_HINT:
                assert answer == expected[question]
            else:
                assert hint == INFORMATIVE_HINT and answer == caption  # the whole caption sentence
                assert expected[question].lower() in answer.lower()
        triplet = extract_triplet(pairs)
        assert triplet is not None and triplet.precise == expected[triplet.question]


def test_synth_py_with_the_rule_synthesizer_writes_questions_tasks_and_counts_the_shortfall(compose_cfg, tmp_path):
    import json

    from mllm_da.orchestration.synth import synthesize
    from mllm_da.synthesis.parse import PRECISE_HINT, parse_output
    from tests.test_custom_domain import _png

    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    captions = list(REAL_CAPTIONS)[:4]  # the four: they support 4, 2, 3 and 2 templates
    rows = ["image,caption"]
    for i, caption in enumerate(captions):
        (root / "images" / f"p{i}.png").write_bytes(_png((40 * i, 90, 160)))
        rows.append(f'p{i}.png,"{caption}"')
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = compose_cfg(
        [
            "domain=custom",
            f"domain.root={root}",
            "synthesizer=rules",
            "synthesizer.questions=3",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        config_name="synth",
        output_dir=tmp_path / "run",
    )
    synthesize(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["rules"] == {
        "questions": 3,
        "records": 4,
        "tasks": 3 + 2 + 3 + 2,
        "short_records": 2,
        "missing_tasks": 2,
        "records_without_task": 0,
    }
    stage = Path(summary["stages"]["synthesize"]["dir"])
    by_caption = {}
    for row in (stage / "generations.jsonl").read_text().splitlines():
        generated = json.loads(row)
        hinted = [(*p.question.split("\n", 1), p.answer) for p in parse_output(generated["text"])]
        by_caption[generated["id"]] = {q: answer for hint, q, answer in hinted if hint == PRECISE_HINT}
    assert sorted(len(asked) for asked in by_caption.values()) == [2, 2, 3, 3]
    for asked in by_caption.values():
        caption = next(c for c in captions if set(asked) <= set(REAL_CAPTIONS[c]))
        assert all(answer == REAL_CAPTIONS[caption][q] for q, answer in asked.items())
    parsed = [json.loads(r) for r in (stage / "parsed.jsonl").read_text().splitlines()]
    assert all(r["triplet"] is not None for r in parsed) and summary["metrics"]["triplet_rate"] == 1.0


# ------------------------------------------------------------------------------------------------ progress


class _RecordingBar:
    """Stands in for :func:`progress_bar`: remembers what a loop reported (total and updates)."""

    made: list[_RecordingBar] = []

    def __init__(self, total: int, desc: str, unit: str, setting: object = "auto", **kwargs: object) -> None:
        self.total, self.desc, self.unit, self.setting, self.n = total, desc, unit, setting, 0
        self.disable = False
        _RecordingBar.made.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self) -> _RecordingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def recording_bars(monkeypatch) -> list[_RecordingBar]:
    from mllm_da.evaluation import generation
    from mllm_da.synthesis import judging, runner

    _RecordingBar.made = []
    for module in (runner, judging, generation):
        monkeypatch.setattr(module, "progress_bar", _RecordingBar)
    return _RecordingBar.made


@pytest.mark.parametrize(
    ("setting", "tty", "ci", "shown"),
    [
        ("auto", True, None, True),
        ("auto", True, "true", False),
        ("auto", True, "1", False),
        ("auto", True, "false", True),
        ("auto", False, None, False),
        (None, True, None, True),
        ("true", False, "true", True),
        (True, False, None, True),
        ("false", True, None, False),
        (False, True, None, False),
    ],
)
def test_one_rule_decides_whether_a_bar_is_drawn(monkeypatch, setting, tty: bool, ci: str | None, shown: bool):
    import io

    from mllm_da.utils import progress

    class _Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr(progress.sys, "stderr", _Stream())
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert progress.show_progress(setting) is shown
    bar = progress.progress_bar(5, "x", "record", setting)
    assert bar.disable is not shown and bar.total == 5
    bar.close()


def test_synthesis_reports_every_record_to_its_bar(recording_bars, tmp_path, synth_inputs, synth_backbone):
    from mllm_da.synthesis import runner

    job = runner.SynthesisJob(
        backbone=synth_backbone,
        inputs=synth_inputs[:5],
        folder=str(tmp_path / "s"),
        batch_size=2,
        max_new_tokens=3,
        progress="false",
    )
    runner.run_job(job)
    assert [(b.total, b.n, b.unit, b.setting) for b in recording_bars] == [(5, 5, "record", "false")]


def test_evaluation_reports_every_benchmark_sample_to_its_bar(recording_bars, compose_cfg, tmp_path):
    from mllm_da.orchestration.evaluate import evaluate
    from tests.test_custom_domain import BENCHMARK_ROWS, _benchmark, _csv

    root = tmp_path / "mine"
    _csv(root)
    _benchmark(root, BENCHMARK_ROWS)
    evaluate(
        compose_cfg(
            ["domain=custom", f"domain.root={root}", "max_new_tokens=2"],
            config_name="evaluate",
            output_dir=tmp_path / "run",
        )
    )
    assert sorted((b.desc, b.total, b.n, b.unit, b.setting) for b in recording_bars) == [
        ("eval custom_mc", 2, 2, "sample", "auto"),
        ("eval custom_vqa", 4, 4, "sample", "auto"),
    ]


def test_the_llm_filter_reports_every_triplet_to_its_bar(recording_bars, monkeypatch, compose_cfg, tmp_path):
    from types import SimpleNamespace

    from mllm_da.synthesis import finishing
    from mllm_da.synthesis.parse import Triplet
    from mllm_da.synthesis.stage import config_container

    monkeypatch.setattr(
        finishing.consistency,
        "load_judge",
        lambda *args: SimpleNamespace(labels=lambda prompts: ["yes"] * len(prompts)),
    )
    cfg = compose_cfg(["filter=llm", "filter.batch_size=2", "synthesis.progress=true"], config_name="synth")
    triplets = [Triplet(f"Q{i}?", f"informative {i}", f"precise {i}") for i in range(5)]
    labels = finishing.llm_labels(
        cfg, config_container(cfg.filter), SimpleNamespace(path=tmp_path), [{"id": f"r{i}"} for i in range(5)], triplets
    )
    assert labels == ["yes"] * 5
    assert [(b.total, b.n, b.unit, b.setting) for b in recording_bars] == [(5, 5, "triplet", True)]


def test_synthesizer_tuning_uses_lightnings_bar_under_the_same_rule(monkeypatch, compose_cfg, tmp_path):
    import json

    from mllm_da.synthesis import tuning
    from mllm_da.synthesis.cache import StageDir
    from mllm_da.synthesis.seed import SeedFiles
    from mllm_da.synthesis.stage import StageOutcome

    seen: list[object] = []

    def fake_train(train_cfg):
        seen.append(train_cfg.trainer.enable_progress_bar)
        out = Path(train_cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"artifacts": {"export": str(out / "export")}}))
        return {"export": str(out / "export"), "metrics": {}}

    monkeypatch.setattr(tuning, "train_synthesizer", fake_train)
    seed = SeedFiles(tmp_path / "train.json", tmp_path / "dev.json", tmp_path, tmp_path / "blank.png")
    outcome = StageOutcome("seed", StageDir.for_stage(tmp_path, "seed", {"x": 1}), {}, False)
    reused = []
    for cache, setting in (("one", "false"), ("one", "auto"), ("two", "auto")):
        cfg = compose_cfg([f"paths.cache_dir={tmp_path / cache}", f"synthesis.progress={setting}"], config_name="synth")
        assert tuning.tune_config(cfg, seed).trainer.enable_progress_bar == "auto"  # train.py's own rule
        reused.append(tuning.tune_stage(cfg, outcome, seed).reused)
    # false: synth.py's switch turns Lightning's bar off too; auto: it follows show_progress (training/fit.py)
    assert seen == [False, "auto"]
    assert reused == [False, True, False]  # the switch does not change which synthesizer is tuned (its key)
