"""Looking at results: wandb runs a sweep can be sliced by (axes, tables with images, final scores, the synthesized
data's reference), read back from the offline run files, and the offline gallery of real run folders."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ROOT, small_run_overrides
from PIL import Image
from wandb_offline import OfflineRun

from mllm_da.dashboards.gallery import build_gallery, main
from mllm_da.dashboards.samples import TRAINED_SEPARATOR, SampleSizes, spread
from mllm_da.orchestration.evaluate import evaluate
from mllm_da.orchestration.synth import synthesize
from mllm_da.orchestration.train import train

EVAL_ROWS = 3  # logger.wandb.log_samples.eval_rows in the sweep below
SMALL_DOMAIN = [o for o in small_run_overrides() if o.startswith("domain.")]


def offline_run(folder: Path) -> OfflineRun:
    (run,) = sorted((folder / "wandb").glob("offline-run-*"))
    return OfflineRun.read(run)


def check_image_cells(logged: dict, column: str = "image") -> None:
    """Every image cell of a logged table points at a PNG that wandb keeps for ``wandb sync``."""
    table = logged["table"]
    at = table["columns"].index(column)
    cells = [row[at] for row in table["data"]]
    assert cells and all(c and c["_type"] == "image-file" for c in cells), cells[:2]
    for cell in cells:
        with Image.open(logged["images"][cell["path"]]) as picture:
            assert picture.size == (cell["width"], cell["height"])


@pytest.fixture(scope="module")
def wandb_sweep(work_root: Path, tmp_path_factory) -> Path:
    """A real two-job toy sweep (``train.py -m seed=0,1``) with ``logger=wandb``, the blind control on, and small
    sample tables: one training step and four benchmark rows per job."""
    sweep = tmp_path_factory.mktemp("sweep")
    overrides = [o for o in small_run_overrides("qwen2_vl", steps=1) if not o.startswith("logger=")]
    env = {
        **os.environ,
        "MLLM_DA_ROOT": str(work_root),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "WANDB_DATA_DIR": str(sweep / "wandb-data"),
    }
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "seed=0,1",
        "logger=wandb",
        f"logger.wandb.log_samples.eval_rows={EVAL_ROWS}",
        "eval.shuffled_control=true",
        "export=false",
        f"hydra.sweep.dir={sweep}",
        *overrides,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def test_sample_sizes_refuse_unknown_keys_and_negative_sizes():
    assert SampleSizes.from_config({"eval_rows": 5}).eval_rows == 5
    with pytest.raises(ValueError, match=r"log_samples: unknown key\(s\) \['eval_row'\]"):
        SampleSizes.from_config({"eval_row": 5})
    with pytest.raises(ValueError, match=r"log_samples.synth_rows: expected an integer >= 0, got -1"):
        SampleSizes.from_config({"synth_rows": -1})
    with pytest.raises(ValueError, match=r"log_samples.image_px: expected an integer >= 1, got 0"):
        SampleSizes.from_config({"image_px": 0})


def test_spread_takes_each_kind_in_turn_and_keeps_file_order():
    rows = [{"n": i, "right": i >= 6} for i in range(8)]
    assert [r["n"] for r in spread(rows, lambda r: r["right"], 4)] == [0, 1, 6, 7]
    assert [r["n"] for r in spread(rows, lambda r: r["right"], 20)] == list(range(8))


@pytest.fixture(scope="module")
def train_run(compose_cfg, tmp_path_factory) -> Path:
    """A real tiny train run (one step, four rows per benchmark, the blind control on) with logger=wandb."""
    out = tmp_path_factory.mktemp("train")
    previous = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(out / "wandb-data")
    overrides = [o for o in small_run_overrides("qwen2_vl", steps=1) if not o.startswith("logger=")]
    try:
        train(compose_cfg([*overrides, "logger=wandb", "eval.shuffled_control=true", "export=false"], output_dir=out))
    finally:
        if previous is None:
            os.environ.pop("WANDB_DATA_DIR")
        else:
            os.environ["WANDB_DATA_DIR"] = previous
    return out


def test_train_run_logs_eval_rows_beside_the_blind_control_and_training_conversations(train_run: Path):
    run = offline_run(train_run)
    summary = json.loads((train_run / "summary.json").read_text())
    assert run.job_type == "train" and "train" in run.tags
    assert (run.config["domain"], run.config["seed"]) == ("toy", 0) and run.config["cfg"]["trainer"]["max_steps"] == 1
    shuffled = summary["eval"]["trained, shuffled images"]
    assert run.summary["final/shuffled/eval/toy_vqa/open_recall"] == pytest.approx(shuffled["eval/toy_vqa/open_recall"])
    for bench in ("toy_vqa", "toy_mc"):
        logged = run.table(f"samples/eval/{bench}")
        assert "shuffled_prediction" in logged["table"]["columns"] and len(logged["table"]["data"]) == 4
        check_image_cells(logged)
    check_image_cells(run.table("samples/train_data"))


@pytest.mark.slow
def test_toy_sweep_wandb_runs_have_axes_tables_images_and_final_scores(wandb_sweep: Path):
    """Each job's offline run: job type, sweep group, tags; the sweep axes as top-level config keys beside the
    full config; the final scores under stable names; bounded eval tables (with the blind control's prediction
    beside each row) and a training-data table, image cells included."""
    for job, seed in ((0, 0), (1, 1)):
        folder = wandb_sweep / str(job)
        summary = json.loads((folder / "summary.json").read_text())
        run = offline_run(folder)
        assert run.job_type == "train" and run.group == f"train/{wandb_sweep.name}"
        assert "train" in run.tags and f"seed={seed}" in run.tags
        config = run.config
        assert (config["domain"], config["model"], config["finetune"]) == ("toy", "tiny_qwen2_vl", "full")
        assert (config["data_mix"], config["stage_mode"], config["seed"]) == ("rule_based", "single_stage", seed)
        assert "experiment" in config and f"seed={seed}" in config["overrides"]
        assert config["cfg"]["trainer"]["max_steps"] == 1 and config["cfg"]["domain"]["name"] == "toy"

        trained = summary["eval"]["trained"]
        shuffled = summary["eval"]["trained, shuffled images"]
        for key in ("eval/toy_vqa/open_recall", "eval/toy_mc/accuracy"):
            assert run.summary[f"final/{key}"] == pytest.approx(trained[key])
            assert run.summary[f"final/shuffled/{key}"] == pytest.approx(shuffled[key])
        assert run.summary["final/train/loss_last"] == pytest.approx(summary["metrics"]["train/loss_last"])

        assert summary["wandb"]["tables"] == ["samples/eval/toy_mc", "samples/eval/toy_vqa", "samples/train_data"]
        predictions = folder / "eval" / "step_1" / "trained" / "predictions" / "toy_vqa.jsonl"
        by_id = {r["id"]: r for r in map(json.loads, predictions.read_text().splitlines())}
        for bench in ("toy_vqa", "toy_mc"):
            logged = run.table(f"samples/eval/{bench}")
            columns = logged["table"]["columns"]
            for column in ("question", "prediction", "label", "score", "question_type", "shuffled_prediction"):
                assert column in columns, (bench, columns)
            rows = [dict(zip(columns, r)) for r in logged["table"]["data"]]
            assert len(rows) == EVAL_ROWS and {r["benchmark"] for r in rows} == {bench}
            check_image_cells(logged)
            if bench == "toy_vqa":
                for row in rows:
                    assert row["prediction"] == by_id[row["id"]]["prediction"]
                    assert row["score"] == by_id[row["id"]]["score"]
        logged = run.table("samples/train_data")
        rows = [dict(zip(logged["table"]["columns"], r)) for r in logged["table"]["data"]]
        assert rows and all("<|im_start|>" in r["text"] and r["trained"] for r in rows)
        assert all(part in r["text"] for r in rows for part in r["trained"].split(TRAINED_SEPARATOR))
        check_image_cells(logged)


class _Page(HTMLParser):
    """The ids, the select elements and the inline scripts of a page; any remote reference."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.scripts: dict[str, str] = {}
        self.remote: list[str] = []
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        values = dict(attrs)
        if "id" in values:
            self.ids.add(values["id"])
        for name in ("src", "href"):
            if values.get(name) and re.match(r"(https?:)?//", values[name]):
                self.remote.append(values[name])
        if tag == "script":
            self._script = values.get("id") or f"script{len(self.scripts)}"
            self.scripts[self._script] = ""

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts[self._script] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None


def read_gallery(path: Path) -> tuple[_Page, dict]:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page, json.loads(page.scripts["gallery-data"])


def test_gallery_of_a_train_run_is_one_offline_page_with_images_answers_scores_and_filters(
    train_run: Path, tmp_path: Path
):
    run = train_run
    path = build_gallery(run, tmp_path / "gallery.html", rows=50, image_px=64)
    page, data = read_gallery(path)
    assert {"f-section", "f-benchmark", "f-question_type", "f-filter_label", "f-verdict", "cards"} <= page.ids
    assert page.remote == [] and "http://" not in path.read_text() and "https://" not in path.read_text()
    assert data["entry"] == "train" and set(data["sections"]) == {"eval", "train"}

    rows = data["sections"]["eval"]
    predictions = run / "eval" / "step_1" / "trained" / "predictions"
    expected = sum(len(p.read_text().splitlines()) for p in predictions.glob("*.jsonl"))
    assert len(rows) == expected  # four rows per benchmark, all under the row limit
    assert {r["benchmark"] for r in rows} == {"toy_vqa", "toy_mc"} and {r["right"] for r in rows} <= {True, False}
    for row in rows:
        assert row["question"] and row["label"] is not None and row["score"] in (0.0, 1.0)
        assert "shuffled_prediction" in row and row["question_type"]
        url = data["images"][row["image"]]
        assert url.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
            assert picture.format == "JPEG" and max(picture.size) <= 64
    assert all(r["text"] for r in data["sections"]["train"])
    assert data["metrics"]["eval/toy_mc/accuracy"] == pytest.approx(
        json.loads((run / "summary.json").read_text())["metrics"]["eval/toy_mc/accuracy"]
    )


def test_synth_run_logs_its_tasks_with_images_and_a_reference_to_its_files(compose_cfg, tmp_path: Path, monkeypatch):
    """``synth.py`` (rule synthesizer, heuristic filter) with ``logger=wandb``: the tasks table holds image,
    caption, triplet, filter label, formatted task and the toy truth's verdict; the task files are an artifact of
    references whose metadata carries their sha256; the gallery shows them filterable by filter label."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    cfg = compose_cfg(
        [
            "synthesizer=rules",
            "logger=wandb",
            "logger.wandb.log_samples.synth_rows=6",
            *SMALL_DOMAIN,
            f"paths.cache_dir={tmp_path / 'cache'}",  # its own cache: other tests check a first synthesis computes
        ],
        config_name="synth",
        output_dir=tmp_path / "synth",
    )
    synthesize(cfg)
    run = offline_run(tmp_path / "synth")
    assert run.job_type == "synth" and "synth" in run.tags
    assert (run.config["domain"], run.config["synthesizer"], run.config["seed"]) == ("toy", "rules", 0)
    summary = json.loads((tmp_path / "synth" / "summary.json").read_text())
    assert run.summary["final/filter_yield"] == pytest.approx(summary["metrics"]["filter_yield"])

    logged = run.table("samples/synth")
    check_image_cells(logged)
    rows = [dict(zip(logged["table"]["columns"], r)) for r in logged["table"]["data"]]
    assert len(rows) == 6
    for row in rows:
        assert row["caption"] and row["instruction"] and row["precise"] and row["informative"]
        assert row["filter_label"] in ("yes", "no") and row["instruction"] in row["formatted_task"] or not row["kept"]
        assert isinstance(row["precise_right"], bool)  # the toy domain knows the truth

    (artifact,) = [a for a in run.artifacts if a["type"] == "synthetic-tasks"]
    files = artifact["metadata"]["files"]
    assert any(p.endswith("parsed.jsonl") for p in files) and any(p.endswith("judgements.jsonl") for p in files)
    for path, facts in files.items():
        assert facts["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert all(entry["ref"].startswith("file://") and not entry["local_path"] for entry in artifact["files"].values())

    _, data = read_gallery(build_gallery(tmp_path / "synth", tmp_path / "synth.html"))
    tasks = data["sections"]["synth"]
    labels = {r["label"] for r in _judgements(summary)}
    assert len(labels) > 1 and {r["filter_label"] for r in tasks} == labels  # kept and dropped, taken in turn
    assert all(r["image"] in data["images"] and r["instruction"] for r in tasks)


def _judgements(summary: dict) -> list[dict]:
    return [json.loads(line) for line in Path(summary["artifacts"]["judgements"]).read_text().splitlines()]


def test_evaluate_run_logs_scored_rows_with_images_and_its_gallery_filters_by_benchmark(
    compose_cfg, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    tiny = next(o for o in small_run_overrides() if o.startswith("model.backbone.tiny="))
    cfg = compose_cfg(
        ["logger=wandb", tiny, *SMALL_DOMAIN, "limit=4", "batch_size=4"],
        config_name="evaluate",
        output_dir=tmp_path / "eval",
    )
    metrics = evaluate(cfg)
    run = offline_run(tmp_path / "eval")
    assert run.job_type == "evaluate" and run.config["model"] == "tiny_qwen2_vl"
    assert run.summary["final/eval/toy_mc/accuracy"] == pytest.approx(metrics["eval/toy_mc/accuracy"])
    for bench in ("toy_vqa", "toy_mc"):
        check_image_cells(run.table(f"samples/eval/{bench}"))
    _, data = read_gallery(build_gallery(tmp_path / "eval", tmp_path / "eval.html"))
    assert {r["benchmark"] for r in data["sections"]["eval"]} == {"toy_vqa", "toy_mc"}


def test_gallery_command_names_what_is_wrong(tmp_path: Path, capsys):
    assert main([str(tmp_path / "missing")]) == 1
    assert "not a run folder (no summary.json)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "summary.json").write_text(json.dumps({"entry": "train", "status": "failed"}))
    assert main([str(tmp_path / "empty")]) == 1
    assert "nothing to show" in capsys.readouterr().err


@pytest.mark.slow
def test_gallery_renders_in_headless_chromium(train_run: Path, tmp_path: Path):
    """The page as a browser draws it from disk: one card per row, each with its picture, question, prediction
    and score, right and wrong marked; and a screenshot."""
    sys.path.insert(0, str(ROOT / "tools"))
    from gallery_browser import find_browser

    if find_browser() is None:
        pytest.skip("no chromium: apt-get install -y chromium (Debian) to run the browser check")
    page = build_gallery(train_run, tmp_path / "gallery.html")
    shot = tmp_path / "gallery.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gallery_browser.py"), str(page), "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    _, data = read_gallery(page)
    rows = data["sections"]["eval"]
    cards = dom.split('<div class="card ')[1:]
    assert len(cards) == len(rows) and f"showing {len(rows)} of {len(rows)}" in dom
    verdicts = [card.split('"', 1)[0] for card in cards]
    assert verdicts == ["right" if r["right"] else "wrong" for r in rows]
    for card, row in zip(cards, rows, strict=True):
        assert card.split('"', 2)[1] == " data-section="
        assert '<img src="data:image/jpeg;base64,' in card
        assert "<b>question</b>" in card and "<b>prediction</b>" in card and "<b>score</b>" in card
        assert html.escape(row["question"].split("\n")[0], quote=False) in card
    with Image.open(shot) as picture:
        assert picture.size == (1280, 860)
        assert len(picture.convert("RGB").getcolors(1 << 20) or []) > 50  # drawn, not a blank page
