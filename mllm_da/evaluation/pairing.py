"""The blind control: each question shown another row's picture (``shuffle_images``), which tells whether a model's
score comes from the image at all. The pairing is a seeded derangement of the distinct images."""

from __future__ import annotations

import random

from mllm_da.evaluation.benchmarks import Benchmark


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly random cyclic permutation (Sattolo's algorithm): ``perm[i] != i`` for all i if n >= 2."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: never leaves an element in place
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def image_pairing(bench: Benchmark, seed: int) -> dict[int, int]:
    """Row index -> the row index whose image it is shown instead of its own.

    The derangement is over DISTINCT images (rows sharing a picture, as VQA-RAD's and the toy's do, share a
    key), so no question is ever paired with its own picture through a sibling row. Seeded by ``seed`` and the
    task name, so reruns (and resumes) pair identically.
    """
    keys = {row.index: bench.image_key(row.index) for row in bench.rows}
    first_row: dict[str, int] = {}
    for index, key in keys.items():
        first_row.setdefault(key, index)
    distinct = list(first_row)
    if len(distinct) < 2:
        raise ValueError(f"{bench.name}: shuffle_images needs at least two distinct images, found {len(distinct)}")
    perm = derangement(len(distinct), random.Random(f"mllm-da/shuffle-images/{seed}/{bench.name}"))
    position = {key: i for i, key in enumerate(distinct)}
    return {index: first_row[distinct[perm[position[key]]]] for index, key in keys.items()}
