"""Behaviours matched to the reference code (docs/adamllm-reference.md), one test each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mllm_da.synthesis.seed import SeedExample, split_and_blank


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
