"""Behaviours matched to the reference code (docs/adamllm-reference.md), one test each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mllm_da.synthesis.seed_format import SeedExample, split_and_blank


def _examples(sizes: dict[str, int]) -> list[SeedExample]:
    examples, index = [], 0
    for task, size in sizes.items():
        for _ in range(size):
            examples.append(SeedExample(f"e{index}", Path(f"/{index}.png"), "c", (), task, index))
            index += 1
    return examples


def test_seed_split_puts_int_ninety_percent_of_each_task_in_train_walking_tasks_in_file_order():
    examples = _examples({"zeta": 5, "alpha": 15})
    train, dev = split_and_blank(examples, 0.0, 0.1)
    dev_by_task = {task: sum(1 for ex, _ in dev if ex.task_name == task) for task in ("zeta", "alpha")}
    assert dev_by_task == {"zeta": 5 - int(0.9 * 5), "alpha": 15 - int(0.9 * 15)}  # 1 and 2: dev gets the rounding
    renamed = [dataclasses.replace(ex, task_name={"zeta": "a", "alpha": "b"}[ex.task_name]) for ex in examples]
    again_train, again_dev = split_and_blank(renamed, 0.0, 0.1)
    assert [ex.id for ex, _ in again_train] == [ex.id for ex, _ in train]  # names do not decide the order
    assert [ex.id for ex, _ in again_dev] == [ex.id for ex, _ in dev]


def test_parser_removes_a_missing_turn_end_only_where_present_unless_the_reference_cut_is_asked():
    from mllm_da.synthesis.parse import LLAMA3, parse_output

    fmt = LLAMA3
    # two rounds; the first answer lacks its turn end (the model wrote the next header straight after it)
    text = f"Q1?{fmt.qa_separator}The lesion is red.{fmt.user_header}Q2?{fmt.qa_separator}Red.{fmt.turn_close}"
    ours = parse_output(text, fmt)
    assert [(p.question, p.answer) for p in ours] == [("Q1?", "The lesion is red."), ("Q2?", "Red.")]
    reference = parse_output(text, dataclasses.replace(fmt, reference_cut=True))
    assert [(p.question, p.answer) for p in reference] == [("Q1?", "The lesi"), ("Q2?", "Red.")]
    short = f"Q1?{fmt.qa_separator}Red.{fmt.user_header}Q2?{fmt.qa_separator}Blue.{fmt.turn_close}"
    assert [p.answer for p in parse_output(short, dataclasses.replace(fmt, reference_cut=True))] == ["Blue."]
    assert [p.answer for p in parse_output(short, fmt)] == ["Red.", "Blue."]


def test_reference_answer_cut_is_a_synthesis_setting_that_reaches_the_parser(compose_cfg):
    from mllm_da.synthesis.generate import parse_format

    assert parse_format(compose_cfg([], config_name="synth")).reference_cut is False
    cfg = compose_cfg(["synthesis.reference_answer_cut=true"], config_name="synth")
    assert parse_format(cfg).reference_cut is True


def _prompt_ids(cfg) -> tuple[list[int], int]:
    """Token ids of a synthesis prompt rendered with the composed preset's chat format."""
    from omegaconf import OmegaConf

    from mllm_da.backbones.chat_format import LLAMA3_HEADERS
    from mllm_da.backbones.llava_next import llama3_tokenizer
    from mllm_da.data.records import Turn

    overrides = OmegaConf.to_container(cfg.model.backbone.chat_format, resolve=True)
    chat = dataclasses.replace(LLAMA3_HEADERS, **overrides)
    text, _ = chat.render([Turn("user", "<image>\nDescribe the image."), Turn("assistant", "A cat.")])
    tokenizer = llama3_tokenizer({"vocab": 400}, chat.to_jinja())
    return tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.bos_token_id


def test_the_released_synthesizer_is_prompted_with_two_begin_of_text_tokens_and_others_with_one(compose_cfg):
    ids, bos = _prompt_ids(compose_cfg(["synthesizer=adamllm"], config_name="synth"))
    assert ids[:3].count(bos) == 2 and ids[2] != bos
    for preset in ("llava_next_llama3_8b", "tiny_llava_next"):
        ids, bos = _prompt_ids(compose_cfg([f"synthesizer={preset}"], config_name="synth"))
        assert ids[0] == bos and ids[1] != bos


def test_inverse_tasks_are_drawn_with_the_reference_shares_per_branch():
    from mllm_da.synthesis.formatting import REFERENCE_INVERSE_SHARE, format_triplet
    from mllm_da.synthesis.parse import Triplet

    plain = Triplet("How many?", "Two. So the answer is two.", "There are two shapes. So the answer is two.")
    cot = Triplet("How many?", "two", "There are two shapes in the image")
    n = 4000
    for triplet, kind, branch in ((plain, "qa", "informative_concludes"), (cot, "cot", "chain_of_thought")):
        tasks = [format_triplet(triplet, f"r{i}", inverse_tasks=True) for i in range(n)]
        assert {t.branch for t in tasks} == {branch}
        share = sum(t.inverse for t in tasks) / n
        expected = REFERENCE_INVERSE_SHARE[kind]
        assert abs(share - expected) < 3 * (expected * (1 - expected) / n) ** 0.5  # within 3 standard errors
        assert not any(format_triplet(triplet, f"r{i}").inverse for i in range(200))  # off by default


def test_the_paper_presets_turn_inverse_tasks_on(compose_cfg):
    for comparison in ("data_source", "stage_mode", "base_vs_post"):
        cfg = compose_cfg([f"experiment=paper/{comparison}", "domain=biomed", "model=qwen2_vl_2b"])
        assert "formatting.inverse_tasks=true" in cfg.data_mix.synthesis.overrides
