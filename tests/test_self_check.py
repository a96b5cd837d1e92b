"""``synthesis.self_check``: the synthesizer answers each triplet's question once more, directly and greedily, and
the filter drops a triplet whose second answer disagrees with its precise answer (hand-written answers and rows;
the tiny synthesizer through both engines, vLLM through the fake package)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mllm_da.backbones.generate import cut_at_stop_token, new_tokens
from mllm_da.backbones.loading import load_backbone
from mllm_da.synthesis import filter as consistency
from mllm_da.synthesis.answers import answers_agree
from mllm_da.synthesis.cache import StageDir
from mllm_da.synthesis.parse import INFORMATIVE_HINT, LLAMA3, PRECISE_HINT, Triplet
from mllm_da.synthesis.requests import SelfCheck, self_check_turns
from mllm_da.synthesis.rules import render_output
from mllm_da.synthesis.runner import SynthesisJob, SynthesizerGenerator, make_generator
from mllm_da.synthesis.stage import StageOutcome

MC = "What colour is the circle?\nA. red\nB. blue\nC. green"


@pytest.mark.parametrize(
    ("first", "second", "question", "agree"),
    [
        ("yes", "Yes, there is.", "Is there a red circle?", True),
        ("no", "yes", "Is there a red circle?", False),
        ("B", "blue", MC, True),
        ("B.", "b", MC, True),
        ("A", "blue", MC, False),
        ("3", "three", "How many shapes are there?", True),
        ("a red circle", "Red circle.", "What is at the top left?", True),
        ("red", "blue", "What colour is the circle?", False),
        ("", "red", "What colour is the circle?", False),
        ("The season.", "season", "What changed?", True),
        ("large", "small large", "What size is it?", False),
    ],
)
def test_answers_agree_on_hand_written_pairs(first: str, second: str, question: str, agree: bool):
    assert answers_agree(first, second, question) is agree
    assert answers_agree(second, first, question) is agree


def test_a_kept_label_becomes_self_check_no_only_when_the_check_disagrees():
    triplet = Triplet("Is there a red circle?", "yes", "A red circle is at the top left, so yes.")
    assert consistency.self_check_agrees({"id": "r"}, triplet) is None  # synthesized without a self-check
    assert consistency.self_check_agrees({"self_check": "Yes."}, triplet) is True
    assert consistency.self_check_agrees({"self_check": "no"}, triplet) is False
    assert consistency.self_check_agrees({"self_check": None}, triplet) is False
    assert consistency.self_checked_label("yes", False) == consistency.SELF_CHECK_NO
    assert consistency.self_checked_label("yes", True) == "yes"
    assert consistency.self_checked_label("yes", None) == "yes"
    assert consistency.self_checked_label("no", False) == "no"  # already dropped: its own reason stays


def _parsed_row(record_id: str, question: str, precise: str, informative: str, check: str | None) -> dict:
    fields = {"Q": question, "precise_A": precise, "informative_A": informative}
    return {"id": record_id, "qa": [], "triplet": fields, "finished": True, "error": None, "self_check": check}


@pytest.mark.parametrize("filter_preset", ["heuristic", "none"])
def test_the_filter_stage_drops_disagreeing_triplets_except_unfiltered(compose_cfg, tmp_path: Path, filter_preset):
    from mllm_da.synthesis.finishing import filter_stage

    rows = [
        _parsed_row("r1", "Is there a red circle?", "yes", "A red circle is at the top left, so yes.", "Yes"),
        _parsed_row("r2", "Is there a red circle?", "yes", "A red circle is at the top left, so yes.", "no"),
        _parsed_row("r3", "How many shapes are there?", "two", "There are three shapes.", "two"),
        {"id": "r4", "qa": [], "triplet": None, "finished": True, "error": None, "self_check": None},
    ]
    synth_dir = StageDir.for_stage(tmp_path, "synthesize", {"rows": rows})
    synth_dir.path.mkdir(parents=True, exist_ok=True)
    (synth_dir.path / "parsed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_cfg([f"filter={filter_preset}", f"paths.cache_dir={tmp_path}"], config_name="synth")
    judged = filter_stage(cfg, StageOutcome("synthesize", synth_dir, {}, False))
    labels = {r["id"]: r["label"] for r in map(json.loads, (judged.dir.path / "judgements.jsonl").open())}
    stats = judged.meta["stats"]
    assert stats["self_check"] == {"checked": 3, "agreed": 2}
    if filter_preset == "none":
        assert labels == {"r1": "unfiltered", "r2": "unfiltered", "r3": "unfiltered"} and stats["kept"] == 3
    else:  # r3: the heuristic's own "no" (three is not two) stays its reason
        assert labels == {"r1": "yes", "r2": consistency.SELF_CHECK_NO, "r3": "no"} and stats["kept"] == 1
        assert stats["labels"][consistency.SELF_CHECK_NO] == 1


def triplet_prefill(question: str) -> str:
    """Text that makes every output hold a triplet for ``question`` whatever the random model writes after it."""
    pairs = [(INFORMATIVE_HINT, question, "It is red, so red."), (PRECISE_HINT, question, "red")]
    return render_output(pairs, LLAMA3) + LLAMA3.user_header


def test_the_transformers_generator_asks_each_triplet_back_greedily(synth_backbone, synth_inputs):
    """Each row with a triplet gets the greedy answer to its question asked under the precise hint after the
    caption round (the same tokens a direct generation gives), sampling or not; a row without one gets none."""
    from mllm_da.synthesis.sampling import SamplingConfig

    backbone = load_backbone(**synth_backbone)
    question = "What colour is the circle?"
    check = SelfCheck(LLAMA3, max_new_tokens=5)
    items = synth_inputs[:3]
    sampled = SamplingConfig(temperature=0.9, top_p=0.95, seed=3)
    rows = SynthesizerGenerator(backbone, 4, sampling=sampled, prefill=triplet_prefill(question), self_check=check)(
        items
    )
    turn_end = backbone.stop_token_ids()
    from mllm_da.data.images import load_image

    batch = backbone.generation_batch(
        [(self_check_turns(it.caption, question), [load_image(it.image)]) for it in items]
    )
    direct = new_tokens(backbone.model, backbone.tokenizer, batch, turn_end, 5)
    expected = [
        backbone.tokenizer.decode(cut_at_stop_token(t, set(turn_end))[0], skip_special_tokens=True).strip()
        for t in direct
    ]
    assert [r["self_check"] for r in rows] == expected
    turns = self_check_turns(items[0].caption, question)
    text = backbone.tokenizer.decode(backbone.generation_prompt_ids(turns))
    assert text.endswith(f"{PRECISE_HINT}\n{question}{LLAMA3.qa_separator}")  # an open assistant turn
    plain = SynthesizerGenerator(backbone, 4, self_check=check)(items)  # random text: no triplet, no check
    assert all("self_check" not in r for r in plain)


def test_a_job_carries_its_self_check_to_the_generator(synth_backbone, synth_inputs, tmp_path: Path):
    check = SelfCheck(dataclasses.replace(LLAMA3, reference_cut=True), 7)
    job = SynthesisJob(
        backbone=synth_backbone, inputs=synth_inputs[:2], folder=str(tmp_path), self_check=check.to_json()
    )
    again = SynthesisJob.from_json(json.loads(json.dumps(job.to_json())))
    assert SelfCheck.from_json(again.self_check) == check and SelfCheck.from_json({}) is None
    assert make_generator(again).self_check == check


def test_the_config_turns_it_on_and_refuses_it_for_rules(compose_cfg):
    from mllm_da.synthesis.generate import self_check

    assert self_check(compose_cfg([], config_name="synth")) is None
    on = self_check(compose_cfg(["synthesis.self_check.enabled=true"], config_name="synth"))
    assert on is not None and on.max_new_tokens == 32 and on.fmt.user_header == LLAMA3.user_header
    rules = compose_cfg(["synthesizer=rules", "synthesis.self_check.enabled=true"], config_name="synth")
    with pytest.raises(ValueError, match="self_check"):
        self_check(rules)
