"""Length plan, batch sampler, train/val split and single-stage mixing on real toy files and a tiny backbone."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import TEST_TINY
from PIL import Image

from mllm_da.backbones.base import IGNORE_INDEX
from mllm_da.backbones.loading import load_backbone
from mllm_da.data.datamodule import (
    ConversationDataset,
    LengthGroupedBatchSampler,
    length_grouped_batches,
    padding_fraction,
    split_train_val,
)
from mllm_da.data.mixing import DataMix, DomainFiles, mix_single_stage
from mllm_da.data.records import IMAGE_PLACEHOLDER, BadRecordError, Conversation, Turn
from mllm_da.toy import build_toy_domain


@pytest.fixture(scope="module")
def toy(work_root: Path):
    files = build_toy_domain(work_root / "data" / "toy_small", n_train=48, n_test=8, tasks_per_image=3, seed=0)
    return DomainFiles(
        name="toy",
        image_root=str(files.root),
        image_caption_pairs=str(files.caption_pairs),
        rule_tasks=str(files.rule_tasks),
    )


@pytest.fixture(scope="module")
def qwen(work_root: Path):
    return load_backbone(
        family="qwen2_vl",
        variant="tiny",
        tiny=TEST_TINY,
        cache_dir=str(work_root / "cache"),
        image={"min_pixels": 112 * 112, "max_pixels": 112 * 112},
    )


# ------------------------------------------------------------------------------------------------ sampler


def test_sampler_is_deterministic_covers_every_sample_once_and_changes_with_epoch():
    lengths = [random.Random(i).randint(10, 500) for i in range(103)]
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=3)
    first = list(sampler)
    assert first == list(LengthGroupedBatchSampler(lengths, 8, seed=3))
    assert sorted(i for b in first for i in b) == list(range(103))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert len(sampler) == len(first) == 13


def test_ranks_get_disjoint_equal_shares():
    lengths = list(range(100))
    shards = [list(LengthGroupedBatchSampler(lengths, 4, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))


def test_skip_batches_resumes_inside_the_epoch():
    lengths = list(range(64))
    full = list(LengthGroupedBatchSampler(lengths, 4, seed=1))
    resumed = LengthGroupedBatchSampler(lengths, 4, seed=1)
    resumed.skip_batches = 5
    assert list(resumed) == full[5:]
    assert list(resumed) == full, "the skip applies once, to the resumed epoch only"


def test_length_grouping_reduces_padding():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(20, 60), rng.randint(400, 600)]) for _ in range(2000)]
    plain = length_grouped_batches(lengths, 16, random.Random(0), group_by_length=False)
    grouped = length_grouped_batches(lengths, 16, random.Random(0), group_by_length=True)
    assert padding_fraction(lengths, grouped) < padding_fraction(lengths, plain) / 3
    assert padding_fraction([5, 5], [[0, 1]]) == 0.0
    assert padding_fraction([2, 6], [[0, 1]]) == pytest.approx(1 - 8 / 12)


def test_val_split_is_stable_and_disjoint():
    convs = [
        Conversation(id=f"r{i}", turns=[Turn("user", "q"), Turn("assistant", "a")], images=[], source="t")
        for i in range(500)
    ]
    train, val = split_train_val(convs, 0.1)
    assert 25 <= len(val) <= 80 and len(train) + len(val) == 500
    train2, val2 = split_train_val(list(reversed(convs)), 0.1)
    assert {c.id for c in val2} == {c.id for c in val}
    assert split_train_val(convs, 0.0) == (convs, [])


# ------------------------------------------------------------------------------------------------- mixing


def test_mix_places_caption_first_or_last_by_record_id_and_one_image_placeholder():
    caption = [Turn("user", "Describe the picture."), Turn("assistant", "Two shapes.")]
    tasks = [Turn("user", "How many?"), Turn("assistant", "two")]
    orders = set()
    for i in range(40):
        turns = mix_single_stage(f"id{i}", caption, tasks)
        assert turns == mix_single_stage(f"id{i}", caption, tasks)
        assert turns[0].content.startswith(f"{IMAGE_PLACEHOLDER}\n")
        assert sum(t.content.count(IMAGE_PLACEHOLDER) for t in turns) == 1
        orders.add(turns[1].content)
    assert orders == {"Two shapes.", "two"}


def test_rule_based_mix_joins_each_caption_with_its_images_tasks(toy: DomainFiles, tmp_path: Path):
    mix = DataMix(name="rule_based", tasks="rule_based")
    convs = mix.build(toy, rejects_dir=tmp_path)
    captions = json.loads(Path(toy.image_caption_pairs).read_text())
    assert len(convs) == len(captions) == mix.reports["mixed"]["conversations"]
    assert mix.reports["mixed"]["with_tasks"] == len(convs)
    for conv in convs:
        assert len(conv.turns) == 2 + 2 * 3
        assert sum(t.content.count(IMAGE_PLACEHOLDER) for t in conv.turns) == len(conv.images) == 1
    only = DataMix(name="caption_only").build(toy)
    assert all(len(c.turns) == 2 for c in only)
    capped = DataMix(name="r", tasks="rule_based", max_tasks_per_image=1).build(toy)
    assert all(len(c.turns) == 4 for c in capped)


def test_records_sharing_an_image_each_get_only_their_own_tasks(tmp_path: Path):
    """Task files that keep the caption's record id (synthetic, rule tasks) are joined by id, so two captions of
    one picture do not both get both records' tasks; a user's file with other ids is joined by image."""
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "shared.png")

    def record(record_id: str, question: str, answer: str) -> dict:
        return {
            "id": record_id,
            "images": ["shared.png"],
            "messages": [
                {"role": "user", "content": f"{IMAGE_PLACEHOLDER}{question}"},
                {"role": "assistant", "content": answer},
            ],
        }

    (tmp_path / "captions.json").write_text(
        json.dumps([record("a", "Describe.", "Caption A."), record("b", "Describe.", "Caption B.")])
    )
    (tmp_path / "tasks.json").write_text(json.dumps([record("a", "Task of A?", "A."), record("b", "Task of B?", "B.")]))
    (tmp_path / "external.json").write_text(json.dumps([record("x", "Shared task?", "X.")]))
    domain = DomainFiles(
        name="t",
        image_root=str(tmp_path),
        image_caption_pairs=str(tmp_path / "captions.json"),
        rule_tasks=str(tmp_path / "tasks.json"),
    )
    mixed = {c.id: [t.content for t in c.turns] for c in DataMix("rule_based", tasks="rule_based").build(domain)}
    assert any("Task of A?" in t for t in mixed["a"]) and not any("Task of B?" in t for t in mixed["a"])
    assert any("Task of B?" in t for t in mixed["b"]) and not any("Task of A?" in t for t in mixed["b"])
    external = DataMix("external", tasks="external", external_file=str(tmp_path / "external.json")).build(domain)
    assert all(any("Shared task?" in t.content for t in c.turns) for c in external)


def test_bad_caption_record_is_skipped_and_counted_or_fails_naming_the_line(toy: DomainFiles, tmp_path: Path):
    rows = json.loads(Path(toy.image_caption_pairs).read_text())[:3]
    rows[1]["images"] = ["images/missing.png"]
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    domain = DomainFiles(name="t", image_root=toy.image_root, image_caption_pairs=str(bad))
    convs = DataMix(name="caption_only").build(domain, policy="skip", rejects_dir=tmp_path / "rejects")
    assert len(convs) == 2
    assert (tmp_path / "rejects" / "image_caption_pairs.jsonl").read_text().count("\n") == 1
    with pytest.raises(BadRecordError, match=r"pairs\.jsonl.*2"):
        DataMix(name="caption_only").build(domain, policy="fail")


# ------------------------------------------------------------------------------------------- length plan


def test_plan_drops_or_cuts_long_samples_but_never_through_image_tokens(qwen, tmp_path: Path):
    img = tmp_path / "x.png"
    Image.new("RGB", (112, 112), (245, 245, 245)).save(img)
    long_answer = " ".join(["two red squares"] * 60)
    conv = Conversation(
        id="long",
        turns=[Turn("user", f"{IMAGE_PLACEHOLDER}\nDescribe the image."), Turn("assistant", long_answer)],
        images=[str(img)],
        source="t",
    )
    image_tokens = qwen.num_image_tokens(112, 112)
    full = qwen.encode(conv.turns, [(112, 112)], sample_id="long")
    first_trained = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    cutoff = image_tokens + first_trained + 10
    assert full.expanded_length > cutoff

    dropped = ConversationDataset(qwen, [conv], cutoff_len=cutoff, truncation="drop")
    assert len(dropped) == 0 and dropped.report.dropped == 1 and sum(dropped.report.reasons.values()) == 1

    cut = ConversationDataset(qwen, [conv], cutoff_len=cutoff, truncation="cut_text")
    assert len(cut) == 1 and cut.report.cut == 1
    sample = cut[0]
    assert sample.expanded_length == cutoff
    assert any(label != IGNORE_INDEX for label in sample.labels)
    batch = qwen.collate([sample])
    assert int((batch["input_ids"] == qwen.image_token_id).sum()) == image_tokens
    assert batch["input_ids"].shape[1] == cutoff

    too_short = ConversationDataset(qwen, [conv], cutoff_len=image_tokens + first_trained - 1, truncation="cut_text")
    assert len(too_short) == 0 and too_short.report.dropped == 1


def test_weighted_mixture_subsamples_repeats_and_keeps_copies_on_one_side_of_the_split(toy: DomainFiles):
    from mllm_da.data.weighted import WeightedMix, weighted_sample

    mix = WeightedMix(
        name="w",
        seed=0,
        components={
            "rules": {"mix": DataMix(name="rule_based", tasks="rule_based"), "weight": 1.5},
            "captions": {"mix": DataMix(name="caption_only"), "weight": 0.25},
        },
    )
    convs = mix.build(toy)
    n = len(json.loads(Path(toy.image_caption_pairs).read_text()))
    assert mix.reports["rules"]["used"] == n + n // 2 and mix.reports["captions"]["used"] == round(n / 4)
    assert len(convs) == len({c.id for c in convs}) == mix.reports["mixed"]["conversations"]
    assert convs == mix.build(toy), "seeded"
    train, val = split_train_val(convs, 0.3)
    base = lambda c: c.id.split("#")[0]  # noqa: E731
    assert not {base(c) for c in train} & {base(c) for c in val}
    two_stage_tasks = mix.restricted(captions=False, tasks=True).build(toy)
    assert all(len(c.turns) == 6 for c in two_stage_tasks if "#rules" in c.id)
    assert not [c for c in two_stage_tasks if "#captions" in c.id]
    with pytest.raises(ValueError, match="weight"):
        weighted_sample([], -1.0, random.Random(0))
