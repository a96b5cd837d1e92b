"""predict.py and the README's plain-transformers snippet give evaluate.py's answers on a trained tiny export.

One tiny Qwen2-VL is trained briefly on a small toy domain (module fixture) and evaluate.py answers a few questions
about its test images (a generic benchmark: toy questions and a caption request per image). predict.py (in
process and as a command) and the snippet printed in the README, run in a fresh interpreter without mllm_da, must
give exactly those answers. A control shows that the comparison can fail: the snippet without the image token
types answers differently.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FAMILIES, ROOT, TEST_TINY, small_run_overrides
from PIL import Image, ImageDraw

from mllm_da.orchestration.evaluate import evaluate, predict
from mllm_da.orchestration.train import train

README = ROOT / "README.md"
HEADING = "### Predicting with a trained model"
#: the snippet's placeholders, replaced (and only they) by the test's folder, image and question
PLACEHOLDERS = {
    "folder": '"logs/train/runs/<time>/export"',
    "image": '"photo.jpg"',
    "question": '"What is in this picture?"',
}
MARKER = "mm_token_type_ids"
#: the small toy domain of this module (its own root: the conftest's toy_small keeps its own sizes)
DOMAIN = ["domain.root=${paths.data_dir}/toy_predict", "domain.prepare.n_train=96", "domain.prepare.n_test=6"]
CAPTION = "Describe the image."


def readme_snippet() -> str:
    """The python block of the README's prediction subsection, as printed."""
    section = README.read_text(encoding="utf-8").split(HEADING, 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, f"expected one python block under {HEADING!r}, found {len(blocks)}"
    return blocks[0]


@dataclass
class Trained:
    run: Path  # the train run folder
    export: Path
    domain: Path
    questions: list[dict]  # image (absolute), question
    answers: list[str]  # evaluate.py's, in question order


@pytest.fixture(scope="module")
def trained(compose_cfg, tmp_path_factory) -> Trained:
    base = tmp_path_factory.mktemp("predict")
    run = base / "train"
    keep = [o for o in small_run_overrides("qwen2_vl", steps=150) if not o.startswith(("domain.", "data."))]
    # captions only, at a high learning rate: in 150 steps the model learns to describe each picture differently
    cfg = compose_cfg(
        [
            *keep,
            *DOMAIN,
            "data_mix=caption_only",
            "optim.lr=5e-3",
            "data.micro_batch_size=8",
            "data.global_batch_size=8",
            "data.val_fraction=0.1",
            "eval.enabled=false",
        ],
        output_dir=run,
    )
    train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok", summary.get("error")
    domain = Path(cfg.domain.root)

    # the questions: a caption request about each test image and a few toy benchmark questions
    toy = [json.loads(line) for line in (domain / "benchmark" / "toy_vqa.jsonl").read_text().splitlines()]
    images = list(dict.fromkeys(r["image"] for r in toy))
    rows = [{"image": i, "input": CAPTION} for i in images] + toy[:3]
    bench = [
        {"id": str(n), "image": r["image"], "input": r["input"], "label": "x", "answer_type": "OPEN"}
        for n, r in enumerate(rows)
    ]
    source = base / "questions_benchmark.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in bench))
    ev = base / "evaluate"
    evaluate(
        compose_cfg(
            [
                *DOMAIN,
                f"checkpoint={run}",
                "benchmarks=[generic]",
                f"benchmark.generic.source={source}",
                f"benchmark.generic.image_root={domain}",
                "benchmark.generic.metric=vqa_open_closed",
                "max_new_tokens=32",
                "progress=false",
            ],
            config_name="evaluate",
            output_dir=ev,
        )
    )
    predictions = [json.loads(line) for line in (ev / "predictions" / "generic.jsonl").read_text().splitlines()]
    assert [p["index"] for p in predictions] == list(range(len(bench)))
    return Trained(
        run,
        run / "export",
        domain,
        [{"image": str(domain / r["image"]), "question": r["input"]} for r in bench],
        [p["prediction"] for p in predictions],
    )


def predict_cfg(compose_cfg, out: Path, *overrides: str):
    return compose_cfg(list(overrides), config_name="predict", output_dir=out)


def test_the_answers_depend_on_the_image_and_the_question(trained: Trained):
    """Otherwise equal answers below would prove little."""
    assert len(set(trained.answers)) >= len(trained.answers) // 2, trained.answers


def test_the_export_stops_generation_where_evaluate_stops(trained: Trained):
    """A plain ``model.generate`` stops at every stop token of the chat format, as evaluate.py's generation."""
    from transformers import AutoTokenizer

    stops = AutoTokenizer.from_pretrained(trained.export).convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    eos = json.loads((trained.export / "generation_config.json").read_text())["eos_token_id"]
    assert set(stops) <= set(eos), (stops, eos)


def test_predict_gives_evaluate_answers_from_a_jsonl_file(trained: Trained, compose_cfg, tmp_path: Path):
    # image paths relative to the file's folder
    source = tmp_path / "questions" / "rows.jsonl"
    source.parent.mkdir()
    rows = [
        {"image": os.path.relpath(q["image"], source.parent), "question": q["question"], "id": f"q{i}"}
        for i, q in enumerate(trained.questions)
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    got = predict(predict_cfg(compose_cfg, out, f"checkpoint={trained.export}", f"input={source}"))
    assert [r["prediction"] for r in got] == trained.answers
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()] == got
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["questions"] == len(rows)
    assert summary["model"] == {"family": "qwen2_vl", "variant": "pretrained", "source": str(trained.export)}


def test_predict_command_on_a_train_run_folder(trained: Trained, tmp_path: Path):
    """``python predict.py checkpoint=<run> images=[...] questions=[...]``: answers printed and written."""
    picked = [0, len(trained.questions) - 1]
    images = ",".join(trained.questions[i]["image"] for i in picked)
    questions = ",".join(json.dumps(trained.questions[i]["question"]) for i in picked)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        str(ROOT / "predict.py"),
        f"checkpoint={trained.run}",
        f"images=[{images}]",
        f"questions=[{questions}]",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == [trained.answers[i] for i in picked]
    assert [r["question"] for r in rows] == [trained.questions[i]["question"] for i in picked]
    for i in picked:
        assert (
            f"{trained.questions[i]['image']}: {trained.questions[i]['question']}\n  {trained.answers[i]}\n"
            in done.stdout
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_preset_answers_without_a_checkpoint_as_evaluate_does(compose_cfg, tmp_path: Path, family: str):
    """No checkpoint: the preset itself (its tiny model), with its family's prompt (LLaVA's image separator)."""
    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        image = Image.new("RGB", (112, 112), (245, 245, 245))
        ImageDraw.Draw(image).rectangle([10 + 40 * i, 10, 50 + 40 * i, 60], fill=colour)
        image.save(tmp_path / f"{i}.png")
        images.append(f"{i}.png")
    tiny = ",".join(f"{k}:{v}" for k, v in TEST_TINY.items())
    model = [f"model=tiny_{family}", f"model.backbone.tiny={{{tiny}}}", "max_new_tokens=6"]
    source = tmp_path / "bench.jsonl"
    source.write_text(
        "".join(
            json.dumps({"image": i, "input": "What colour is the shape?", "label": "red", "answer_type": "OPEN"}) + "\n"
            for i in images
        )
    )
    evaluate(
        compose_cfg(
            [
                *model,
                "benchmarks=[generic]",
                f"benchmark.generic.source={source}",
                f"benchmark.generic.image_root={tmp_path}",
                "benchmark.generic.metric=vqa_open_closed",
                "progress=false",
            ],
            config_name="evaluate",
            output_dir=tmp_path / "evaluate",
        )
    )
    expected = [
        json.loads(line)["prediction"]
        for line in (tmp_path / "evaluate" / "predictions" / "generic.jsonl").read_text().splitlines()
    ]
    out = tmp_path / "predict"
    got = predict(
        predict_cfg(
            compose_cfg,
            out,
            *model,
            f"images=[{tmp_path / images[0]},{tmp_path / images[1]}]",
            "question=What colour is the shape?",
        )
    )
    assert [r["prediction"] for r in got] == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["model"]["variant"] == "tiny"


def run_snippet(snippet: str, questions: list[dict], folder: Path) -> list[str]:
    """Run ``snippet`` once per question in a fresh interpreter (no mllm_da import), the placeholders replaced."""
    for placeholder in PLACEHOLDERS.values():
        assert snippet.count(placeholder) == 1, f"placeholder {placeholder} not in the README snippet once"
    programs = []
    for q in questions:
        values = {"folder": str(folder), "image": q["image"], "question": q["question"]}
        program = snippet
        for key, placeholder in PLACEHOLDERS.items():
            program = program.replace(placeholder, json.dumps(values[key]))
        programs.append(program)
    driver = (
        "import contextlib, io, json, sys\n"
        "answers = []\n"
        "for program in json.load(sys.stdin):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        exec(compile(program, 'README snippet', 'exec'), {'__name__': '__main__'})\n"
        "    answers.append(out.getvalue())\n"
        "assert 'mllm_da' not in sys.modules\n"
        "print(json.dumps(answers))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [sys.executable, "-c", driver],
        input=json.dumps(programs),
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(p.endswith("\n") for p in printed)
    return [p[:-1] for p in printed]


def test_readme_snippet_gives_evaluate_answers_without_mllm_da(trained: Trained):
    snippet = readme_snippet()
    assert "mllm_da" not in snippet and "AutoProcessor" not in snippet
    assert run_snippet(snippet, trained.questions, trained.export) == trained.answers

    # the control: the same snippet without the image token types answers differently (the comparison can fail)
    lines = snippet.splitlines(keepends=True)
    marked = [line for line in lines if line.startswith(f'inputs["{MARKER}"]')]
    assert len(marked) == 1
    without = "".join(line for line in lines if line not in marked)
    assert run_snippet(without, trained.questions, trained.export) != trained.answers


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ([], "nothing to ask"),
        (["image=A"], "no question"),
        (["image=A", "images=[A]", "question=q"], "image= or images=, not both"),
        (["images=[A,A,A]", "questions=[q,r]"], "3 images and 2 questions"),
        (["image=missing.png", "question=q"], "no such image file"),
        (["image=A", 'question="<image> What is it?"'], "contains '<image>'"),
        (["image=A", "question=q", "batch_size=0"], "batch_size"),
        (["image=A", "question=q", "model=tiny_llava_next", "checkpoint=EXPORT"], "is a qwen2_vl model"),
    ],
)
def test_bad_options_are_refused_before_a_model_loads(
    trained: Trained, compose_cfg, tmp_path: Path, overrides, match: str
):
    image = trained.questions[0]["image"]
    overrides = [
        o.replace("=A", f"={image}")
        .replace("A]", f"{image}]")
        .replace("A,", f"{image},")
        .replace("EXPORT", str(trained.export))
        .replace("missing.png", str(tmp_path / "missing.png"))
        for o in overrides
    ]
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=re.escape(match)):
        predict(predict_cfg(compose_cfg, out, *overrides))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and match in summary["error"]
    assert not (out / "predictions.jsonl").exists()
