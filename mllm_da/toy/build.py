"""The toy domain on disk: training files, the rule-task baseline and benchmark rows, built once per parameters.

:func:`build_toy_domain` writes ShareGPT training files, the rule-task baseline and AdaptLLM-style benchmark rows,
and is a no-op while its manifest still matches its parameters and the files it vouches for. Concurrent builders
(one per DDP rank) of one folder build it once. ``python -m mllm_da.toy.build OUT_DIR`` builds one by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mllm_da.toy.images import render_scene, write_png
from mllm_da.toy.scene import (
    MIN_IMAGE_SIZE,
    REFERENCE_SIZE,
    ToyScene,
    caption_instruction,
    describe_scene,
    sample_scene,
)
from mllm_da.toy.tasks import rule_tasks, task_row
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER
from mllm_da.utils.io import atomic_write_json, atomic_write_jsonl, locked_dir

log = logging.getLogger(__name__)

#: bump when the generator's output changes, so that existing folders are rebuilt
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ToyDomainFiles:
    """Where a built toy domain lives; image paths inside the files are relative to ``root``."""

    root: Path
    images_dir: Path
    benchmark_images_dir: Path
    caption_pairs: Path
    rule_tasks: Path
    vqa_benchmark: Path
    mc_benchmark: Path
    manifest: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> ToyDomainFiles:
        root = Path(root)
        return cls(
            root=root,
            images_dir=root / "images",
            benchmark_images_dir=root / "benchmark" / "images",
            caption_pairs=root / "image_caption_pairs.json",
            rule_tasks=root / "rule_tasks.json",
            vqa_benchmark=root / "benchmark" / "toy_vqa.jsonl",
            mc_benchmark=root / "benchmark" / "toy_mc.jsonl",
            manifest=root / "manifest.json",
        )


def build_toy_domain(
    out_dir: str | os.PathLike,
    n_train: int = 4000,
    n_test: int = 200,
    tasks_per_image: int = 3,
    seed: int = 0,
    image_size: int = REFERENCE_SIZE,
) -> ToyDomainFiles:
    """Write the toy domain into ``out_dir``, or reuse it if its manifest matches these parameters.

    Files: ``images/train_*.png``, ``image_caption_pairs.json`` and ``rule_tasks.json`` (ShareGPT), and
    ``benchmark/images/test_*.png`` with ``benchmark/toy_vqa.jsonl`` (OPEN/CLOSED rows) and
    ``benchmark/toy_mc.jsonl`` (A-D rows). The manifest is written last, so an interrupted build is redone.
    """
    if n_train < 1 or n_test < 0 or tasks_per_image < 1:
        raise ValueError(
            f"need n_train >= 1, n_test >= 0, tasks_per_image >= 1 ({n_train}, {n_test}, {tasks_per_image})"
        )
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    params = {
        "n_train": n_train,
        "n_test": n_test,
        "tasks_per_image": tasks_per_image,
        "seed": seed,
        "image_size": image_size,
    }
    files = ToyDomainFiles.at(out_dir)
    with locked_dir(files.root):
        if _is_current(files, params):
            log.info("toy domain at %s is up to date", files.root)
            return files
        log.info("building toy domain at %s with %s", files.root, params)
        _write_domain(files, params)
    return files


def _expected_files(params: dict[str, int]) -> list[str]:
    """Every file the manifest vouches for, relative to the root, sorted."""
    names = [
        "image_caption_pairs.json",
        "rule_tasks.json",
        "benchmark/toy_vqa.jsonl",
        "benchmark/toy_mc.jsonl",
    ]
    names += [_train_image(i) for i in range(params["n_train"])]
    names += [_test_image(i) for i in range(params["n_test"])]
    return sorted(names)


def _train_image(i: int) -> str:
    return f"images/train_{i:06d}.png"


def _test_image(i: int) -> str:
    return f"benchmark/images/test_{i:06d}.png"


def _content_sha256(root: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + hashlib.sha256((root / name).read_bytes()).digest())
    return digest.hexdigest()


def _is_current(files: ToyDomainFiles, params: dict[str, int]) -> bool:
    """True when the manifest matches the parameters and every file it vouches for is there, unchanged."""
    try:
        manifest = json.loads(files.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("version") != FORMAT_VERSION or manifest.get("params") != params:
        return False
    names = _expected_files(params)
    if not all((files.root / name).is_file() for name in names):
        return False
    return manifest.get("content_sha256") == _content_sha256(files.root, names)


def _write_domain(files: ToyDomainFiles, params: dict[str, int]) -> None:
    files.manifest.unlink(missing_ok=True)
    for folder, pattern in ((files.images_dir, "train_*.png"), (files.benchmark_images_dir, "test_*.png")):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob(pattern), *folder.glob(".*.tmp")]:
            stale.unlink()

    seed, size, k = params["seed"], params["image_size"], params["tasks_per_image"]
    seen: set[ToyScene] = set()  # no image repeats, within or across splits

    scene_rng, text_rng = _rngs(seed, "train")
    captions: list[dict[str, Any]] = []
    task_records: list[dict[str, Any]] = []
    for i in range(params["n_train"]):
        scene = _fresh_scene(scene_rng, size, seen)
        image = _train_image(i)
        write_png(files.root / image, render_scene(scene))
        record_id = f"toy-{i:06d}"
        instruction = caption_instruction(text_rng)
        captions.append(
            {
                "id": record_id,
                "messages": [
                    {"role": "user", "content": IMAGE_PLACEHOLDER + instruction},
                    {"role": "assistant", "content": describe_scene(scene)},
                ],
                "images": [image],
            }
        )
        tasks = rule_tasks(scene, text_rng, k)
        messages = []
        for j, task in enumerate(tasks):
            prompt = IMAGE_PLACEHOLDER + task.prompt if j == 0 else task.prompt
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": task.answer}]
        task_records.append(
            {
                "id": record_id,
                "messages": messages,
                "images": [image],
                "question_types": [t.question_type for t in tasks],
                "answer_types": [t.answer_type for t in tasks],
            }
        )

    scene_rng, text_rng = _rngs(seed, "test")
    vqa_rows: list[dict[str, Any]] = []
    mc_rows: list[dict[str, Any]] = []
    for i in range(params["n_test"]):
        scene = _fresh_scene(scene_rng, size, seen)
        image = _test_image(i)
        write_png(files.root / image, render_scene(scene))
        for j, task in enumerate(rule_tasks(scene, text_rng, k, ("OPEN", "CLOSED"))):
            vqa_rows.append({"id": f"toy-vqa-{i:06d}-{j}", "image": image, **task_row(task)})
        for j, task in enumerate(rule_tasks(scene, text_rng, k, ("MC",))):
            mc_rows.append({"id": f"toy-mc-{i:06d}-{j}", "image": image, **task_row(task), **(task.options or {})})

    atomic_write_json(files.caption_pairs, captions)
    atomic_write_json(files.rule_tasks, task_records)
    atomic_write_jsonl(files.vqa_benchmark, vqa_rows)
    atomic_write_jsonl(files.mc_benchmark, mc_rows)

    def types(rows: list[dict[str, Any]]) -> dict[str, int]:
        return dict(sorted(Counter(r["question_type"] for r in rows).items()))

    manifest = {
        "version": FORMAT_VERSION,
        "params": params,
        "counts": {
            "train_images": params["n_train"],
            "test_images": params["n_test"],
            "caption_pairs": len(captions),
            "rule_tasks": sum(len(r["question_types"]) for r in task_records),
            "vqa_rows": len(vqa_rows),
            "mc_rows": len(mc_rows),
            "vqa_question_types": types(vqa_rows),
            "mc_question_types": types(mc_rows),
        },
        "content_sha256": _content_sha256(files.root, _expected_files(params)),
    }
    atomic_write_json(files.manifest, manifest)


def _rngs(seed: int, split: str) -> tuple[random.Random, random.Random]:
    """Separate streams for scenes and texts, so changing tasks_per_image leaves the images as they were."""
    prefix = f"mllm-da-toy/{seed}/{split}"
    return random.Random(f"{prefix}/scenes"), random.Random(f"{prefix}/texts")


def _fresh_scene(rng: random.Random, image_size: int, seen: set[ToyScene]) -> ToyScene:
    while True:
        scene = sample_scene(rng, image_size)
        if scene not in seen:
            seen.add(scene)
            return scene


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mllm_da.toy.build OUT_DIR [--n-train N ...]``: build (or reuse) a toy domain, print its files."""
    parser = argparse.ArgumentParser(prog="python -m mllm_da.toy.build", description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to write the toy domain into")
    parser.add_argument("--n-train", type=int, default=4000, help="training images")
    parser.add_argument("--n-test", type=int, default=200, help="held-out benchmark images")
    parser.add_argument("--tasks-per-image", type=int, default=3, help="rule tasks and benchmark rows per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=REFERENCE_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = build_toy_domain(
        args.out_dir,
        n_train=args.n_train,
        n_test=args.n_test,
        tasks_per_image=args.tasks_per_image,
        seed=args.seed,
        image_size=args.image_size,
    )
    for field in fields(files):
        print(f"{field.name}: {getattr(files, field.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
