"""The offline gallery: a run folder (train, synth or evaluate) as ONE self-contained HTML page that opens from
disk with no server and no network. Each sample shows its image (a small JPEG embedded as base64, one copy per
picture) beside the question, answers and score; plain JavaScript filters by benchmark, question type, filter
label and right/wrong.

    python -m mllm_da.dashboards.gallery RUN_DIR [--out FILE] [--rows N] [--image-px N]   (or: make gallery RUN=...)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mllm_da.dashboards.samples import RunFolder, eval_rows, synth_rows, thumbnail, train_rows
from mllm_da.utils.io import atomic_write_text

#: metrics shown in the page's header beside each benchmark's scores
HEADLINE = ("train/loss_first", "train/loss_last", "val/loss", "parse_rate", "filter_yield", "kept_rate")
#: the sections of the page and the row kind each holds
SECTIONS = {"eval": "Evaluation", "synth": "Synthesized tasks", "train": "Training data"}


def image_key(ref: Path | bytes) -> str:
    raw = ref if isinstance(ref, bytes) else str(ref).encode()
    return hashlib.sha1(raw).hexdigest()[:16]


def embed_images(rows: list[dict[str, Any]], image_px: int, quality: int = 70) -> dict[str, str]:
    """Replace each row's ``image`` by a key into the returned map of data URLs (JPEG thumbnails, one per
    picture); a row whose image cannot be read keeps none."""
    images: dict[str, str] = {}
    for row in rows:
        ref = row.pop("image", None)
        row["image"] = None
        if ref is None:
            continue
        key = image_key(ref)
        if key not in images:
            try:
                picture = thumbnail(ref, image_px)
            except OSError:
                continue
            assert picture is not None
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=quality)
            images[key] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        row["image"] = key
    return images


def plain(value: Any) -> Any:
    """JSON-safe: paths as text, non-finite numbers as None."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def gallery_data(run: RunFolder, rows: int, image_px: int) -> dict[str, Any]:
    """Everything the page shows: the run's identity and scores, and its sample rows by section."""
    sections = {"eval": eval_rows(run, rows), "synth": synth_rows(run, rows), "train": train_rows(run, rows)}
    images = embed_images([r for part in sections.values() for r in part], image_px)
    metrics = {k: v for k, v in (run.summary.get("metrics") or {}).items() if isinstance(v, int | float)}
    return plain(
        {
            "run": str(run.path),
            "entry": run.entry,
            "status": run.summary.get("status"),
            "metrics": {
                k: v for k, v in metrics.items() if k in HEADLINE or (k.startswith("eval/") and k.count("/") == 2)
            },
            "sections": {k: v for k, v in sections.items() if v},
            "titles": SECTIONS,
            "images": images,
        }
    )


def render_html(data: dict[str, Any]) -> str:
    """The page: the data as an inline JSON script (every ``<`` escaped), styles and the script that draws it."""
    payload = json.dumps(data, ensure_ascii=True).replace("<", "\\u003c")  # no "</script>" or "<!--" inside
    title = html.escape(f"mllm-da gallery: {Path(data['run']).name} ({data['entry']})")
    return PAGE.replace("%TITLE%", title).replace("%DATA%", payload)


def build_gallery(run_dir: str | Path, out: str | Path | None = None, rows: int = 120, image_px: int = 160) -> Path:
    """Write the gallery of ``run_dir`` to ``out`` (default ``<run_dir>/gallery.html``) and return its path."""
    run = RunFolder.open(run_dir)
    data = gallery_data(run, rows, image_px)
    if not data["sections"]:
        raise ValueError(
            f"{run.path}: nothing to show: no predictions (eval/ or predictions/), no synthesized tasks and no "
            "samples/train_data.jsonl in this run folder"
        )
    return atomic_write_text(Path(out) if out else run.path / "gallery.html", render_html(data))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mllm_da.dashboards.gallery", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a train, synth or evaluate run folder (it holds summary.json)")
    parser.add_argument("--out", help="the HTML file to write (default: RUN_DIR/gallery.html)")
    parser.add_argument("--rows", type=int, default=120, help="rows per benchmark / of each other section")
    parser.add_argument("--image-px", type=int, default=160, help="longest side of the embedded thumbnails")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.image_px < 1:
        parser.error("--rows and --image-px must be >= 1")
    try:
        path = build_gallery(args.run_dir, args.out, args.rows, args.image_px)
    except (FileNotFoundError, ValueError) as err:
        print(f"gallery: {err}", file=sys.stderr)
        return 1
    print(f"gallery: {path} ({path.stat().st_size / 1024:.0f} KiB); open it in a browser")
    return 0


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<style>
body{font:13px/1.35 system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{background:#24292f;color:#fff;padding:8px 14px}header h1{font-size:15px;margin:0 0 3px}
header .scores{font-size:12px;color:#cfd6dd}
#filters{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 14px;display:flex;
flex-wrap:wrap;gap:10px;align-items:center;z-index:1}
#filters label{font-size:12px;color:#555}#count{margin-left:auto;font-size:12px;color:#555}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:8px;padding:10px 14px}
.card{background:#fff;border:1px solid #ddd;border-left:5px solid #999;border-radius:6px;padding:6px;display:flex;
gap:8px;align-items:flex-start}.card.right{border-left-color:#2da44e}.card.wrong{border-left-color:#cf222e}
.card img{width:96px;height:96px;object-fit:contain;background:#eee;flex:none;border-radius:4px}
.fields{min-width:0;flex:1}.tags span{display:inline-block;font-size:11px;background:#eef;border-radius:3px;
padding:0 4px;margin:0 3px 3px 0}.tags .v-right{background:#dafbe1}.tags .v-wrong{background:#ffebe9}
.field{margin:1px 0}.field b{font-size:10px;color:#777;text-transform:uppercase;letter-spacing:.03em}
.field div{white-space:pre-wrap;overflow-wrap:anywhere;max-height:4.1em;overflow:hidden}
.field.f-question div{max-height:8.2em}.card:hover .field div{max-height:none}
.text div{font-family:ui-monospace,monospace;font-size:11px}
</style></head><body>
<header><h1 id="title"></h1><div class="scores" id="scores"></div></header>
<div id="filters">
<label>section <select id="f-section"></select></label>
<label>benchmark <select id="f-benchmark"></select></label>
<label>question type <select id="f-question_type"></select></label>
<label>filter label <select id="f-filter_label"></select></label>
<label>right / wrong <select id="f-verdict"><option value="">all</option><option>right</option>
<option>wrong</option><option>unjudged</option></select></label>
<label>text <input id="f-text" size="14"></label><span id="count"></span></div>
<div id="cards"></div>
<script type="application/json" id="gallery-data">%DATA%</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("gallery-data").textContent);
const FIELDS = {
  eval: [["question","question"],["prediction","prediction"],["label","label"],["score","score"],
         ["shuffled_prediction","prediction, shuffled image"],["shuffled_score","score, shuffled image"],
         ["untrained_prediction","untrained prediction"]],
  synth: [["caption","caption"],["instruction","instruction"],["precise","precise answer"],
          ["informative","informative answer"],["formatted_task","formatted task"],["toy_truth","toy truth"]],
  train: [["text","as the model sees it"],["trained","tokens that carry loss"]]};
const TAGS = {eval: ["benchmark","question_type","answer_type"], synth: ["filter_label","question_type"],
              train: ["stage","id"]};
function verdict(section, row) {
  if (section === "eval") return row.right ? "right" : "wrong";
  if (section === "synth" && row.precise_right !== null && row.precise_right !== undefined)
    return row.precise_right ? "right" : "wrong";
  return "unjudged";
}
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function options(select, values) {
  select.replaceChildren(el("option", "", "all"));
  select.firstChild.value = "";
  [...new Set(values.filter(v => v !== "" && v !== null && v !== undefined))].sort()
    .forEach(v => { const o = el("option", "", String(v)); o.value = String(v); select.appendChild(o); });
}
const sel = id => document.getElementById("f-" + id);
function section() { return sel("section").value; }
function refreshOptions() {
  const rows = DATA.sections[section()] || [];
  for (const key of ["benchmark", "question_type", "filter_label"]) {
    options(sel(key), rows.map(r => r[key]));
    sel(key).disabled = sel(key).options.length < 2;
  }
}
function draw() {
  const name = section(), rows = DATA.sections[name] || [], cards = document.getElementById("cards");
  const text = sel("text").value.toLowerCase();
  const shown = rows.filter(r => ["benchmark", "question_type", "filter_label"].every(
      k => !sel(k).value || String(r[k]) === sel(k).value)
    && (!sel("verdict").value || verdict(name, r) === sel("verdict").value)
    && (!text || JSON.stringify(r).toLowerCase().includes(text)));
  cards.replaceChildren(...shown.map(row => {
    const card = el("div", "card " + verdict(name, row));
    card.dataset.section = name;
    const img = el("img");
    if (row.image && DATA.images[row.image]) img.src = DATA.images[row.image];
    img.alt = row.question || row.instruction || row.id || "";
    card.appendChild(img);
    const fields = el("div", "fields"), tags = el("div", "tags");
    // a custom benchmark's question type is its answer type: one badge, not the same word twice
    const shownTags = new Set();
    TAGS[name].forEach(k => {
      if (row[k] && !shownTags.has(String(row[k]))) {
        shownTags.add(String(row[k]));
        tags.appendChild(el("span", "tag-" + k, String(row[k])));
      }
    });
    const v = verdict(name, row);
    const said = name === "synth" ? "precise " : "";
    if (v !== "unjudged") tags.appendChild(el("span", "v-" + v, said + (v === "right" ? "✓ right" : "✗ wrong")));
    if (name === "synth" && typeof row.informative_right === "boolean")
      tags.appendChild(el("span", "v-" + (row.informative_right ? "right" : "wrong"),
                          "informative " + (row.informative_right ? "✓ consistent" : "✗ inconsistent")));
    fields.appendChild(tags);
    for (const [key, title] of FIELDS[name]) {
      if (row[key] === null || row[key] === undefined || row[key] === "") continue;
      const field = el("div", "field " + (name === "train" ? "text " : "") + "f-" + key);
      field.appendChild(el("b", "", title));
      field.appendChild(el("div", "", String(row[key])));
      fields.appendChild(field);
    }
    card.appendChild(fields);
    return card;
  }));
  document.getElementById("count").textContent = `showing ${shown.length} of ${rows.length}`;
}
document.getElementById("title").textContent = `${DATA.entry} run ${DATA.run} (${DATA.status})`;
document.getElementById("scores").textContent = Object.entries(DATA.metrics)
  .map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(" · ");
const sections = Object.keys(DATA.sections);
sections.forEach(s => { const o = el("option", "", `${DATA.titles[s]} (${DATA.sections[s].length})`);
  o.value = s; sel("section").appendChild(o); });
if (sections.includes(location.hash.slice(1))) sel("section").value = location.hash.slice(1);  // gallery.html#synth
sel("section").addEventListener("change", () => { refreshOptions(); draw(); });
["benchmark", "question_type", "filter_label", "verdict"].forEach(k => sel(k).addEventListener("change", draw));
sel("text").addEventListener("input", draw);
refreshOptions();
draw();
</script></body></html>
"""

if __name__ == "__main__":
    sys.exit(main())
