"""Synthesis: parser and triplet goldens, filter prompt and labels, §3.3 branches, seed data, rules, cache keys,
sharding and SIGKILL resumption of the runner, and the toy chain through the real configs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF, ROOT, TEST_TINY, small_run_overrides

from mllm_da import toy
from mllm_da.backbones.chat_format import QWEN_CHATML
from mllm_da.backbones.loading import load_backbone
from mllm_da.data.mixing import mix_single_stage
from mllm_da.data.records import BadRecordError, Conversation, Turn, read_conversations
from mllm_da.synthesis import filter as consistency
from mllm_da.synthesis.cache import StageDir, digest
from mllm_da.synthesis.formatting import (
    COT_TEMPLATES,
    QA_TEMPLATES,
    TemplateSet,
    build_training_sets,
    choose_branch,
    format_triplet,
    load_templates,
)
from mllm_da.synthesis.parse import (
    INFORMATIVE_HINT,
    LLAMA3,
    PRECISE_HINT,
    ParseFormat,
    QAPair,
    Triplet,
    extract_triplet,
    pairs_to_turns,
    parse_output,
)
from mllm_da.synthesis.requests import first_turn_prefill, synthesizer_prompt
from mllm_da.synthesis.rules import render_output, rule_output
from mllm_da.synthesis.runner import (
    BatchLog,
    SynthesisInput,
    SynthesisJob,
    SynthesizerGenerator,
    merge_batches,
    plan_batches,
    run_job,
)
from mllm_da.synthesis.seed import build_seed, toy_seed_examples
from mllm_da.synthesis.seed_format import SeedExample, SeedQA, seed_turns, split_and_blank
from mllm_da.synthesis.visionflan import strip_image_marker, visionflan_examples
from mllm_da.toy import scene_from_caption

U, A, E = LLAMA3.user_header, LLAMA3.qa_separator, LLAMA3.turn_close
P, I = PRECISE_HINT + "\n", INFORMATIVE_HINT + "\n"  # noqa: E741


# --------------------------------------------------------------------------------------------- parser


def test_parser_golden_complete_output():
    text = f"{P}How many?{A}2{E}{U}{I}How many?{A}There are two shapes. So the answer is 2.{E}"
    assert parse_output(text) == [
        QAPair(f"{P}How many?", "2"),
        QAPair(f"{I}How many?", "There are two shapes. So the answer is 2."),
    ]
    assert pairs_to_turns(parse_output(text))[0] == Turn("user", f"{P}How many?")


def test_parser_drops_a_truncated_last_turn():
    text = f"{P}How many?{A}2{E}{U}{I}How many?{A}There are two sha"
    assert parse_output(text) == [QAPair(f"{P}How many?", "2")]
    # a cut inside the question also drops the piece; a text ending with the turn end keeps everything
    assert parse_output(f"{P}Q1?{A}a{E}{U}{P}Q2") == [QAPair(f"{P}Q1?", "a")]
    assert parse_output("") == []


def test_parser_skips_malformed_pieces_silently():
    text = (
        f"{P}no separator here{E}{U}"  # one part only
        f"{P}Q?{A}a{A}b{E}{U}"  # three parts
        f"   {A}answer{E}{U}"  # empty question
        f"{P}Q2?{A}   {E}{U}"  # empty answer
        f"  {P}Q3?  {A}  yes  {E}"  # kept, both stripped
    )
    assert parse_output(text) == [QAPair(f"{P}Q3?", "yes")]


def test_parser_follows_the_backbone_chat_format():
    fmt = ParseFormat.from_chat_format(QWEN_CHATML)
    assert fmt == ParseFormat("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n")
    text = render_output([(PRECISE_HINT, "Q?", "a"), (INFORMATIVE_HINT, "Q?", "because a")], fmt)
    assert parse_output(text, fmt) == [QAPair(f"{P}Q?", "a"), QAPair(f"{I}Q?", "because a")]


def test_triplet_is_the_first_question_asked_under_both_hints():
    pairs = [
        QAPair(f"{P}Q1?", "a1"),
        QAPair(f"{I}Q2?", "long 2"),
        QAPair(f"{P}Q1?", "a1 again"),  # overwrites before the match
        QAPair("Some other question?", "x"),
        QAPair(f"{P}Q2?", "a2"),  # Q2 is complete first
        QAPair(f"{I}Q1?", "long 1"),
    ]
    assert extract_triplet(pairs) == Triplet("Q2?", "a2", "long 2")
    assert extract_triplet(pairs[:4]) is None
    # the question must match exactly after the hint; a hint without its newline is no hint
    assert extract_triplet([QAPair(f"{P}Q?", "a"), QAPair(f"{I}Q ?", "b")]) is None
    assert extract_triplet([QAPair(f"{PRECISE_HINT} Q?", "a"), QAPair(f"{I}Q?", "b")]) is None
    triplet = extract_triplet([QAPair(f"{I}Q1?", "l"), QAPair(f"{P}Q1?", "p")])
    assert triplet is not None and triplet.as_fields() == {"Q": "Q1?", "precise_A": "p", "informative_A": "l"}


# --------------------------------------------------------------------------------------------- filter


#: pins the project's filter prompt; change it deliberately (and this hash) or not at all
DEFAULT_PROMPT_SHA256 = hashlib.sha256(consistency.DEFAULT_PROMPT.encode()).hexdigest()


def test_filter_prompt_golden_structure():
    prompt = consistency.build_prompt(consistency.DEFAULT_PROMPT, Triplet("Is it red?", "yes", "It is red, so yes."))
    assert prompt.endswith(
        "\n\n## Question: Is it red?\n## Informative Answer: It is red, so yes.\n## Precise Answer: yes\n## Consistent:"
    )
    demos = re.findall(
        r"^## Question: .*\n## Informative Answer: .*\n## Precise Answer: .*\n## Consistent:(.*)$", prompt, flags=re.M
    )
    assert demos == [" No", " Open", " Yes", " Yes", " No", " Open", ""]
    # the reference's quirk: literal backslash sequences, not real newlines, inside the demonstrations
    for escape in ("\\n", '\\"', "\\u2014"):
        assert escape in consistency.DEFAULT_PROMPT
    assert prompt.startswith("You will see a question about a picture")
    assert "Yes:" in prompt and "No:" in prompt and "Open:" in prompt
    assert len(DEFAULT_PROMPT_SHA256) == 64


def test_filter_prompt_file_is_checked(tmp_path: Path):
    good = tmp_path / "mine.txt"
    good.write_text("Q={Q} I={informative_A} P={precise_A} {{literal}}\nConsistent:")
    template = consistency.load_prompt(str(good))
    assert consistency.build_prompt(template, Triplet("q", "p", "i")) == "Q=q I=i P=p {literal}\nConsistent:"
    bad = tmp_path / "bad.txt"
    bad.write_text("{Q} {answer}")
    with pytest.raises(ValueError, match="exactly"):
        consistency.load_prompt(str(bad))
    assert consistency.load_prompt(None) == consistency.DEFAULT_PROMPT


@pytest.mark.parametrize(
    ("text", "label", "kept"),
    [
        (" Yes", "yes", True),
        ("yes\n", "yes", True),
        ("Yes.", "yes.", False),
        (" No", "no", False),
        (" Open", "open", False),
        ("", "", False),
    ],
)
def test_filter_label_parsing_keeps_only_exact_yes(text: str, label: str, kept: bool):
    assert consistency.parse_label(text) == label
    assert consistency.is_kept(label) is kept


def test_heuristic_backend_checks_what_its_docstring_says():
    h = consistency.heuristic_label
    assert h(Triplet("q", "Red.", "The circle is red, so the answer is red.")) == "yes"
    assert h(Triplet("q", "the top left", "It sits at the Top-Left corner.")) == "yes"
    assert h(Triplet("q", "blue", "The circle is red.")) == "no"
    assert h(Triplet("q", "B", "So the answer is B, red.")) == "yes"
    assert h(Triplet("q", "?!", "anything")) == "open"
    assert consistency.label_counts(["yes", "no", "yes", "maybe"]) == {"no": 1, "other": 1, "yes": 2}


def test_llm_judge_generates_two_tokens_at_most(work_root: Path):
    judge = consistency.load_judge(
        {
            "model": {"variant": "tiny", "tiny": TEST_TINY, "dtype": "float32"},
            "max_new_tokens": 2,
            "max_length": 2000,
            "stop_token": "<|end_of_text|>",
        },
        str(work_root / ".cache"),
        "cpu",
    )
    triplets = [Triplet("Is it red?", "yes", "It is red."), Triplet("How many?", "2", "There are two.")]
    prompts = [consistency.build_prompt(consistency.DEFAULT_PROMPT, t) for t in triplets]
    labels = judge.labels(prompts)
    assert len(labels) == 2 and all(isinstance(lab, str) for lab in labels)
    for lab in labels:
        assert len(judge.tokenizer(lab, add_special_tokens=False)["input_ids"]) <= 3
    assert labels == judge.labels(prompts)  # greedy
    judge.max_length = 10
    assert judge.labels(prompts[:1]) == ["too_long"]


# --------------------------------------------------------------------------------------------- §3.3


def test_branch_informative_concludes_uses_plain_qa_with_informative_alone():
    t = Triplet("What colour?", "red", "The circle is at the top. So the colour is red.")
    assert choose_branch(t) == "informative_concludes"
    task = format_triplet(t, "rec-1")
    assert task.branch == "informative_concludes" and not task.inverse
    chosen = [x for x in QA_TEMPLATES if not x.inverse][task.template]
    assert task.instruction == chosen.inputs.format(question="What colour?", answer=t.informative).strip()
    assert task.response == chosen.targets.format(question="What colour?", answer=t.informative).strip()


def test_branch_precise_with_indicator_appends_the_precise_answer():
    t = Triplet("Why?", "The final result is red", "The circle is red. It is on the left.")
    assert choose_branch(t) == "precise_has_indicator"
    task = format_triplet(t, "rec-2")
    assert t.informative + " " + t.precise in task.response


def test_branch_chain_of_thought_when_neither_concludes():
    t = Triplet("What colour?", "red", "Thus the shape is a circle. It is red")  # indicator not in LAST sentence
    assert choose_branch(t) == "chain_of_thought"
    task = format_triplet(t, "rec-3")
    chosen = [x for x in COT_TEMPLATES if not x.inverse][task.template]
    fields = {"question": "What colour?", "cot": t.informative, "answer": "red"}
    assert (task.instruction, task.response) == (
        chosen.inputs.format(**fields).strip(),
        chosen.targets.format(**fields).strip(),
    )
    # indicators are substrings with their trailing space: "therefore," does not count
    assert choose_branch(Triplet("q", "x", "It is red, therefore, x")) == "chain_of_thought"


def test_template_choice_is_seeded_by_the_record_id_and_inverse_is_off_by_default():
    t = Triplet("What colour?", "red", "It is red")
    assert format_triplet(t, "abc") == format_triplet(t, "abc")
    assert len({format_triplet(t, f"id{i}").template for i in range(50)}) > 5
    assert not any(format_triplet(t, f"id{i}").inverse for i in range(200))
    assert any(format_triplet(t, f"id{i}", inverse_tasks=True).inverse for i in range(200))
    expected = random.Random("abc").randrange(len(TemplateSet().choices("cot", False)))
    assert format_triplet(t, "abc").template == expected


def test_user_template_file(tmp_path: Path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {
                "qa": [{"inputs": "Q: {question}", "targets": "{answer}"}],
                "cot": [{"inputs": "{question}", "targets": "{cot} => {answer}"}],
            }
        )
    )
    task = format_triplet(Triplet("q?", "a", "because"), "x", load_templates(str(path)))
    assert (task.instruction, task.response) == ("q?", "because => a")
    path.write_text(json.dumps({"qa": [{"inputs": "{question}", "targets": "{cot}"}], "cot": []}))
    with pytest.raises(ValueError, match=r"qa\[0\]"):
        load_templates(str(path))


def test_training_sets_keep_images_and_mix_by_record_id(tmp_path: Path):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    records = [
        Conversation(f"r{i}", (Turn("user", "<image>Describe it."), Turn("assistant", f"caption {i}")), (image,))
        for i in range(6)
    ]
    tasks = {f"r{i}": format_triplet(Triplet("What?", "red", "It is red."), f"r{i}") for i in (1, 2, 4)}
    data = build_training_sets(records, tasks)
    assert [c.id for c in data.synthetic_only] == ["r1", "r2", "r4"]
    assert all(c.images == (image,) for c in data.single_stage + data.caption_only + data.synthetic_only)
    for conv in data.single_stage:
        caption = [Turn("user", "Describe it."), Turn("assistant", f"caption {conv.id[1:]}")]
        task = tasks.get(conv.id)
        extra = [Turn("user", task.instruction), Turn("assistant", task.response)] if task else []
        assert list(conv.turns) == mix_single_stage(conv.id, caption, extra)
    assert data.caption_only[0].turns[0].content == "<image>\nDescribe it."


# --------------------------------------------------------------------------------------------- seed data


def test_seed_conversation_has_the_caption_round_then_shuffled_hinted_pairs():
    qa = tuple(SeedQA(h, f"q{i}", f"a{i}{h[13]}") for i in range(3) for h in (PRECISE_HINT, INFORMATIVE_HINT))
    example = SeedExample("x", Path("/img.png"), "A caption.", qa, "task", index=7)
    turns = seed_turns(example)
    assert turns[:2] == [Turn("user", "<image>\nDescribe the image."), Turn("assistant", "A caption.")]
    users = [t.content for t in turns[2::2]]
    expected = list(qa)
    random.Random(7).shuffle(expected)
    assert users == [f"{q.hint}\n{q.question}" for q in expected]
    assert turns == seed_turns(example)


def test_blank_images_and_split_follow_the_task_groups():
    examples = [SeedExample(f"e{i}", Path(f"/{i}.png"), "c", (), f"task{i % 3}", i) for i in range(3000)]
    train, dev = split_and_blank(examples, 0.1, 0.1)
    assert len(train) + len(dev) == 3000 and len(dev) == 300
    blank = sum(b for _, b in train + dev) / 3000
    assert 0.07 < blank < 0.13
    assert (train, dev) == split_and_blank(examples, 0.1, 0.1)
    none, _ = split_and_blank(examples, 0.0, 0.1)
    assert not any(b for _, b in none)


def test_toy_seed_set_is_written_and_reads_back(tmp_path: Path):
    files, report = build_seed(
        tmp_path,
        {
            "source": "toy",
            "n_images": 30,
            "questions_per_image": 2,
            "blank_fraction": 0.5,
            "dev_fraction": 0.1,
            "seed": 0,
        },
    )
    train, rep = read_conversations(files.train, image_root=files.image_root, policy="fail")
    assert rep.kept == report.train and report.train + report.dev == 30 and report.blank_train > 0
    assert sum(c.images[0].name == "blank.png" for c in train) == report.blank_train
    for conv in train:
        hints = [t.content.split("\n")[0] for t in conv.turns[2::2]]
        assert sorted(hints) == sorted([PRECISE_HINT, INFORMATIVE_HINT] * 2)
        assert (
            extract_triplet(
                parse_output(
                    render_output(
                        [
                            (t.content.split("\n", 1)[0], t.content.split("\n", 1)[1], a.content)
                            for t, a in zip(conv.turns[2::2], conv.turns[3::2])
                        ]
                    )
                )
            )
            is not None
        )
    assert [e.caption for e in toy_seed_examples(tmp_path / "again", 5)] == [
        e.caption for e in toy_seed_examples(tmp_path / "again2", 5)
    ]


def test_toy_seed_set_narrowed_to_count_questions(tmp_path: Path):
    """The demo's seed set: one count question per image, asked under both hints, answered as the caption says."""
    examples = toy_seed_examples(tmp_path, 12, questions_per_image=3, question_types=["count"], answer_types=["OPEN"])
    for example in examples:
        assert [(qa.hint, qa.question) for qa in example.qa] == [
            (PRECISE_HINT, "How many shapes are there?"),
            (INFORMATIVE_HINT, "How many shapes are there?"),
        ]
        precise = example.qa[0].answer
        assert example.caption.startswith("There is one shape" if precise == "one" else f"There are {precise} shapes")
        assert precise in example.qa[1].answer


def _vf_record(image: str, question: str, answer: str, **extra) -> dict:
    return {
        "image": image,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        **extra,
    }


def test_visionflan_merge_rules(tmp_path: Path):
    images = tmp_path / "images" / "vf"
    images.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (images / name).write_bytes(b"x")
    caption = tmp_path / "cap.json"
    caption.write_text(
        json.dumps(
            [
                _vf_record("allava/a.jpg", "<image>\nDescribe.", "First caption of a."),
                _vf_record("allava/a.jpg", "<image>\nDescribe.", "Second caption of a."),
                _vf_record("allava/b.jpg", "<image>\nDescribe.", "Caption of b."),
                _vf_record("allava/c.jpg", "<image>\nDescribe.", "Caption of c."),
            ]
        )
    )
    precise = tmp_path / "meta.json"
    precise.write_text(
        json.dumps(
            [
                _vf_record("vf/a.jpg", "<image>\nWhat is it?", "cat", task_name="t1"),
                _vf_record("vf/a.jpg", "Which colour?\n<image>", "black", task_name="t2"),
                _vf_record("vf/b.jpg", "Count?", "3", task_name="t1"),
            ]
        )
    )
    informative = tmp_path / "inf.json"
    informative.write_text(
        json.dumps(
            [
                _vf_record("x/a.jpg", "<image>\nWhat is it?", "It is a cat."),
                _vf_record("x/c.jpg", "<image>\nWhat?", "Something."),
            ]
        )
    )
    examples, report = visionflan_examples(caption, precise, informative, tmp_path / "images")
    assert [e.id for e in examples] == ["a"]  # b lacks informative, c lacks precise
    (a,) = examples
    assert a.caption == "First caption of a." and a.task_name == "t2" and a.image == (images / "a.jpg").resolve()
    assert [(q.hint, q.question, q.answer) for q in a.qa] == [
        (PRECISE_HINT, "What is it?", "cat"),
        (PRECISE_HINT, "Which colour?", "black"),
        (INFORMATIVE_HINT, "What is it?", "It is a cat."),
    ]
    assert report.dropped == {"no_precise_or_informative_qa": 2}
    assert strip_image_marker("a <image> b") is None
    precise.write_text(json.dumps([_vf_record("vf/a.jpg", "What <image> is it?", "cat")]))
    with pytest.raises(BadRecordError, match=r"meta.json#1: field 'conversations\[0\].value'"):
        visionflan_examples(caption, precise, informative, tmp_path / "images", policy="fail")


# --------------------------------------------------------------------------------------------- rules, cache


def test_rule_synthesizer_reads_toy_captions_and_always_yields_a_triplet():
    rng = random.Random(3)
    for i in range(40):
        scene = toy.sample_scene(rng)
        caption = toy.describe_scene(scene)
        parsed = scene_from_caption(caption)
        assert parsed is not None and [(o.shape, o.colour, o.size, o.quadrant) for o in parsed.objects] == [
            (o.shape, o.colour, o.size, o.quadrant) for o in scene.objects
        ]
        text = rule_output(f"id{i}", caption)
        assert text == rule_output(f"id{i}", caption)
        pairs = parse_output(text)
        assert len(pairs) == 6 and extract_triplet(pairs) is not None
    generic = parse_output(rule_output("g", "A bowl of ramen with egg and scallions, on a wooden table. Tasty."))
    assert extract_triplet(generic) is not None
    subject = [p for p in generic if p.question.endswith("What does the image show?")]
    assert {p.answer for p in subject} == {
        "A bowl of ramen",
        "A bowl of ramen with egg and scallions, on a wooden table.",
    }


def test_stage_keys_follow_their_payload(tmp_path: Path):
    a = StageDir.for_stage(tmp_path, "filter", {"x": 1, "y": [1, 2]})
    assert a.key == StageDir.for_stage(tmp_path, "filter", {"y": [1, 2], "x": 1}).key
    assert a.key != StageDir.for_stage(tmp_path, "filter", {"x": 2, "y": [1, 2]}).key
    assert not a.is_complete()
    a.complete({"n": 3})
    assert a.is_complete() and a.meta()["n"] == 3 and json.loads((a.path / "key.json").read_text())["key"] == a.key
    assert digest({"a": Path("/x")}) == digest({"a": "/x"})


# --------------------------------------------------------------------------------------------- runner


def test_batch_log_cuts_a_torn_tail_and_plans_are_fixed(tmp_path: Path):
    log_ = BatchLog(tmp_path, "g")
    log_.append(0, 0, [{"id": "a"}])
    with open(log_.shard_file(0), "a") as handle:
        handle.write('{"batch": 1, "resu')  # a kill in the middle of a write
    assert set(log_.done()) == {0}
    log_.append(0, 1, [{"id": "b"}])
    assert log_.done() == {0: [{"id": "a"}], 1: [{"id": "b"}]}
    plan = plan_batches([3, 1, 2, 1], ["d", "c", "b", "a"], 2)
    assert plan == [[3, 1], [2, 0]]
    assert [r["id"] for r in merge_batches(BatchLog(tmp_path, "x"), [], [])] == []


def _rows(folder: Path, inputs: list[SynthesisInput]) -> list[dict]:
    plan = json.loads((folder / "plan.json").read_text())["batches"]
    return merge_batches(BatchLog(folder, "generations"), plan, [i.id for i in inputs])


def test_two_shards_merged_equal_one_shard(tmp_path: Path, synth_inputs, synth_backbone):
    generator = SynthesizerGenerator(load_backbone(**synth_backbone), max_new_tokens=12)
    base = dict(backbone=synth_backbone, inputs=synth_inputs, batch_size=3, max_new_tokens=12, progress=False)
    run_job(SynthesisJob(folder=str(tmp_path / "one"), **base), generator)
    run_job(SynthesisJob(folder=str(tmp_path / "two"), num_shards=2, shards=[1], **base), generator)
    run_job(SynthesisJob(folder=str(tmp_path / "two"), num_shards=2, shards=[0], **base), generator)
    one, two = _rows(tmp_path / "one", synth_inputs), _rows(tmp_path / "two", synth_inputs)
    assert one == two and [r["id"] for r in one] == sorted(i.id for i in synth_inputs)
    assert all(r["text"] is not None and r["new_tokens"] <= 12 for r in one)
    assert {p.name for p in (tmp_path / "two").glob("generations-shard*.jsonl")} == {
        "generations-shard0.jsonl",
        "generations-shard1.jsonl",
    }


def test_sigkilled_synthesis_resumes_to_the_uninterrupted_result(tmp_path: Path, synth_inputs, synth_backbone):
    """A worker process is SIGKILLed right after its first batch is on disk; the rerun completes it."""
    job = SynthesisJob(
        backbone=synth_backbone,
        inputs=synth_inputs,
        folder=str(tmp_path / "killed"),
        batch_size=1,
        max_new_tokens=32,
        threads=2,
        progress=False,
    )
    n_batches = len(synth_inputs)
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job.to_json()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mllm_da.synthesis.runner", str(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shard = tmp_path / "killed" / "generations-shard0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (shard.exists() and shard.stat().st_size):
        time.sleep(0.002)
    assert proc.poll() is None, "the worker finished before it could be killed; make its batches slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(BatchLog(tmp_path / "killed", "generations").done())
    assert done_before < n_batches
    generator = SynthesizerGenerator(load_backbone(**synth_backbone), max_new_tokens=32)
    run_job(job, generator)  # the rerun does only what is missing
    run_job(dataclasses.replace(job, folder=str(tmp_path / "whole")), generator)
    assert _rows(tmp_path / "killed", synth_inputs) == _rows(tmp_path / "whole", synth_inputs)
    lines = shard.read_text().strip().split("\n")
    assert sorted(json.loads(line)["batch"] for line in lines) == list(range(n_batches))


# --------------------------------------------------------------------------------------------- configs + chain


@pytest.mark.parametrize("group", ["synthesizer", "filter"])
def test_every_synth_preset_composes(compose_cfg, group: str):
    for path in sorted((CONF / group).glob("*.yaml")):
        cfg = compose_cfg([f"{group}={path.stem}"], config_name="synth")
        from omegaconf import OmegaConf

        OmegaConf.to_container(cfg, resolve=True)
        assert cfg[group] is not None


def test_rule_synthesizer_pipeline_is_cached_and_rekeyed(compose_cfg, tmp_path: Path, work_root: Path):
    from mllm_da.orchestration.synth import synthesize

    overrides = [
        "synthesizer=rules",
        "domain.prepare.n_train=48",
        "domain.prepare.n_test=8",
        "domain.root=${paths.data_dir}/toy_small",
    ]
    metrics = synthesize(compose_cfg(overrides, config_name="synth", output_dir=tmp_path / "a"))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "ok" and metrics["records"] == 48
    assert metrics["parse_rate"] == metrics["triplet_rate"] == 1.0 and metrics["filter_yield"] > 0.5
    assert not any(s["reused"] for s in summary["stages"].values())
    single, report = read_conversations(
        summary["artifacts"]["single_stage"], image_root=work_root / "data" / "toy_small", policy="fail"
    )
    assert report.kept == 48 and sum(len(c.turns) == 4 for c in single) == metrics["kept"]
    synthesize(compose_cfg(overrides, config_name="synth", output_dir=tmp_path / "b"))
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert all(s["reused"] for s in again["stages"].values()) and again["metrics"] == summary["metrics"]
    synthesize(
        compose_cfg([*overrides, "formatting.inverse_tasks=true"], config_name="synth", output_dir=tmp_path / "c")
    )
    third = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert third["stages"]["synthesize"]["reused"] and not third["stages"]["format"]["reused"]
    assert third["stages"]["format"]["key"] != summary["stages"]["format"]["key"]


def test_train_with_data_mix_synthetic_uses_the_cached_pipeline(compose_cfg, tmp_path: Path):
    from mllm_da.orchestration.train import train

    overrides = [
        *small_run_overrides("qwen2_vl", steps=1),
        "data_mix=synthetic",
        "data_mix.synthesis.synthesizer=rules",
        "export=false",
        "eval.enabled=false",
    ]
    train(compose_cfg(overrides, output_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok", summary.get("error")
    read = summary["data"]["read"]
    assert read["mixed"]["with_tasks"] > 0 and read["synthesis"]["records"] == 48
    assert read["synthetic_only.json"]["rejected"] == 0


def test_toy_chain_tune_synthesize_filter_format(compose_cfg, tmp_path: Path):
    """A tiny synthesizer tuned a few steps by the real configs, then synthesis, filter and formatting."""
    from mllm_da.orchestration.synth import synthesize

    tiny = ",".join(f"{k}:{v}" for k, v in TEST_TINY.items())
    overrides = [
        "synthesizer=tiny_llava_next",
        f"model.backbone.tiny={{{tiny}}}",
        "domain.prepare.n_train=48",
        "domain.prepare.n_test=8",
        "domain.root=${paths.data_dir}/toy_small",
        "seed_data.n_images=24",
        "tune.steps=2",
        "tune.micro_batch_size=4",
        "tune.global_batch_size=4",
        'tune.overrides=["trainer.enable_progress_bar=false","checkpoint.every_n_steps=0","data.val_fraction=0.1"]',
        "synthesis.limit=6",
        "synthesis.max_new_tokens=16",
        "synthesis.batch_size=3",
        "filter=llm",
        "filter.model.variant=tiny",
        "filter.model.dtype=float32",
    ]
    metrics = synthesize(compose_cfg(overrides, config_name="synth", output_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok", summary.get("error")
    assert set(summary["stages"]) == {"seed", "tune", "synthesize", "filter", "format"}
    assert metrics["tune_steps"] == 2 and metrics["records"] == 6 and 0.0 <= metrics["parse_rate"] <= 1.0
    assert metrics["records_per_s"] > 0 and "labels" in metrics
    root = Path(summary["artifacts"]["single_stage"]).parent
    for name in ("single_stage", "caption_only", "synthetic_only"):
        rows = json.loads(Path(summary["artifacts"][name]).read_text())
        assert all("images" in r for r in rows)
    assert len(json.loads(Path(summary["artifacts"]["caption_only"]).read_text())) == 6
    assert root.exists() and Path(summary["artifacts"]["synthesizer"], "config.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage=everything"], "stage must be one of"),
        (["synthesis.num_shards=2", "synthesis.shard_index=2"], "shard_index"),
        (["synthesis.processes=3"], "at least as many shards"),
        (["synthesis.batch_size=0"], "batch_size"),
        (["synthesis.device=cuda"], "CUDA"),
        (["filter.backend=magic"], "filter.backend"),
        (["seed_data.source=web"], "seed_data.source"),
        (["synthesizer.checkpoint=/no/such/folder"], "synthesizer.checkpoint"),
        (["formatting.templates_file=/no/such.json"], "templates_file"),
    ],
)
def test_invalid_synth_options_are_refused(compose_cfg, overrides: list[str], message: str):
    import torch

    from mllm_da.config_checks import ConfigError, check_synth_config

    if "synthesis.device=cuda" in overrides and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match=message):
        check_synth_config(compose_cfg(overrides, config_name="synth"))


def test_data_mix_synthetic_names_existing_presets(compose_cfg):
    from mllm_da.config_checks import ConfigError, check_train_config

    check_train_config(compose_cfg(["data_mix=synthetic"]))
    with pytest.raises(ConfigError, match="not a preset"):
        check_train_config(compose_cfg(["data_mix=synthetic", "data_mix.synthesis.synthesizer=gpt5"]))


def test_a_changed_caption_file_changes_the_input_key(compose_cfg, tmp_path: Path, work_root: Path):
    from omegaconf import open_dict

    from mllm_da.synthesis.inputs import read_domain_inputs

    root = work_root / "data" / "toy_small"
    toy.build_toy_domain(root, n_train=48, n_test=8)
    pairs = tmp_path / "pairs.json"
    record = {
        "id": "x1",
        "messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "A caption."}],
        "images": ["images/train_000000.png"],
    }
    pairs.write_text(json.dumps([record]))
    cfg = compose_cfg(["domain.prepare=null"], config_name="synth")
    with open_dict(cfg):
        cfg.domain.image_caption_pairs, cfg.domain.image_root = str(pairs), str(root)
    first = read_domain_inputs(cfg)
    assert [i.caption for i in first.inputs] == ["A caption."] and first.digest == read_domain_inputs(cfg).digest
    record["messages"][1]["content"] = "Another caption."
    pairs.write_text(json.dumps([record]))
    assert read_domain_inputs(cfg).digest != first.digest


def test_first_hint_starts_every_output_with_that_hint(synth_inputs, synth_backbone):
    """``synthesis.first_hint``: the hint is written into the prompt after the open user header, the model goes on
    from it, and the row's text holds it, so the parser reads the first turn as if the model had written it."""
    backbone = load_backbone(**synth_backbone)
    prefill = first_turn_prefill("informative")
    assert prefill == INFORMATIVE_HINT + "\n" and first_turn_prefill(None) == ""
    prompt = synthesizer_prompt(synth_inputs[0].caption)
    ids = backbone.generation_prompt_ids(prompt, prefill)
    plain = backbone.generation_prompt_ids(prompt)
    assert ids[: len(plain) - 1] == plain[:-1] and len(ids) > len(plain)  # the hint comes after the open header
    assert backbone.tokenizer.decode(ids).endswith(backbone.chat_format.user_prefix + prefill)
    rows = SynthesizerGenerator(backbone, max_new_tokens=6, prefill=prefill)(synth_inputs[:3])
    plain_rows = SynthesizerGenerator(backbone, max_new_tokens=6)(synth_inputs[:3])
    assert all(r["text"].startswith(prefill) and 0 < r["new_tokens"] <= 6 for r in rows)
    assert [r["text"] for r in rows] != [r["text"] for r in plain_rows]
    with pytest.raises(ValueError, match="first_hint"):
        first_turn_prefill("both")


def test_first_hint_is_read_from_the_config_and_refused_for_rules(compose_cfg):
    from mllm_da.synthesis.generate import first_hint

    assert first_hint(compose_cfg([], config_name="synth")) is None
    assert first_hint(compose_cfg(["synthesis.first_hint=precise"], config_name="synth")) == "precise"
    rules = compose_cfg(["synthesizer=rules", "synthesis.first_hint=informative"], config_name="synth")
    with pytest.raises(ValueError, match="first_hint"):
        first_hint(rules)


def test_a_moved_cache_keeps_its_tuned_synthesizer(compose_cfg, tmp_path: Path):
    """The tune key leaves out where the seed set lies (a folder in the cache, named by its own key), and a reused
    tuning points at its export where the cache is now, so a cache copied elsewhere is reused, not retuned."""
    from mllm_da.synthesis.cache import StageDir
    from mllm_da.synthesis.seed_format import SeedFiles
    from mllm_da.synthesis.stage import StageOutcome
    from mllm_da.synthesis.tuning import tune_config, tune_payload, tune_stage

    def seed_files(root: Path) -> SeedFiles:
        return SeedFiles(root / "train.json", root / "dev.json", root / "images", root / "blank.png")

    cfg = compose_cfg([f"paths.cache_dir={tmp_path / 'new'}"], config_name="synth")
    here, there = seed_files(tmp_path / "new" / "seed"), seed_files(tmp_path / "old" / "seed")
    payload = tune_payload("seedkey", tune_config(cfg, here))
    assert payload == tune_payload("seedkey", tune_config(cfg, there))
    assert payload != tune_payload("otherkey", tune_config(cfg, here))
    longer = compose_cfg([f"paths.cache_dir={tmp_path / 'new'}", "tune.steps=301"], config_name="synth")
    assert payload != tune_payload("seedkey", tune_config(longer, here))
    moved = StageDir.for_stage(tmp_path / "new", "tune", payload)  # tuned elsewhere, then copied here
    moved.path.mkdir(parents=True, exist_ok=True)
    moved.complete({"export": str(tmp_path / "old" / "tune" / "run" / "export"), "metrics": {}})
    seed_stage = StageOutcome("seed", StageDir(tmp_path / "new" / "seed", "seed", "seedkey"), {}, True)
    outcome = tune_stage(cfg, seed_stage, here)
    assert outcome.reused and outcome.meta["export"] == str(moved.path / "run" / "export")
