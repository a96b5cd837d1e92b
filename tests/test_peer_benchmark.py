"""The peer benchmark's own parts that need no LLaMA-Factory: the step probe, the rates, the checkpoint conversion.

The whole benchmark (``python benchmarks/peer_llamafactory.py``) installs LLaMA-Factory from the package index and
trains for minutes; it is run by hand and its figures are in benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_TINY

from mllm_da.backbones.loading import load_backbone

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peer_llamafactory import convert_for_transformers4, measure  # noqa: E402

PROBE_SCRIPT = """
import sys, torch
sys.path.insert(0, {bench!r})
import peer_probe

class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def forward(self, input_ids=None, attention_mask=None):
        return self.layer(torch.ones(input_ids.shape[0], 4)).sum()

peer_probe.install(Model)
model = Model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for width, real in ((5, [5, 3]), (4, [4, 4])):
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.tensor([[1] * r + [0] * (width - r) for r in real])
    model(input_ids=ids, attention_mask=mask).backward()
    optimizer.step()
model.eval()
model(input_ids=ids, attention_mask=mask)  # not training: not counted
"""


def test_probe_counts_real_and_padded_tokens_per_optimiser_step(tmp_path: Path):
    out = tmp_path / "probe.json"
    env = {**os.environ, "PEER_PROBE_OUT": str(out), "PEER_LAUNCH_TIME": "0"}
    script = PROBE_SCRIPT.format(bench=str(ROOT / "benchmarks"))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    probe = json.loads(out.read_text())
    steps = probe["steps"]
    assert [(s["samples"], s["real_tokens"], s["padded_tokens"], s["forwards"]) for s in steps] == [
        (2, 8, 10, 1),
        (2, 8, 8, 1),
    ]
    assert probe["launch_time"] == 0 and probe["first_forward_time"] > 0 and probe["peak_rss_mib"] > 0
    assert probe["info"]["torch_threads"] == 1 and probe["info"]["optimizer"] == "SGD"


def test_measure_takes_the_rates_after_the_warm_up_steps():
    steps = [
        {"wall": 10.0 + i, "cpu": 5.0 + 0.5 * i, "samples": 8, "real_tokens": 80 + i, "padded_tokens": 100}
        for i in range(5)
    ]
    m = measure({"steps": steps, "launch_time": 1.0, "first_forward_time": 4.0, "peak_rss_mib": 600.0}, warmup=2)
    # steps 3-5 (indices 2-4), timed from the end of the second step: 3 wall seconds, 1.5 CPU-seconds
    assert m["samples_per_s"] == pytest.approx(24 / 3)
    assert m["samples_per_cpu_s"] == pytest.approx(24 / 1.5)
    assert m["tokens_per_s"] == pytest.approx((82 + 83 + 84) / 3)
    assert m["padding"] == pytest.approx(1 - sum(80 + i for i in range(5)) / 500)
    assert m["startup_s"] == 3.0
    with pytest.raises(RuntimeError, match="only 5 optimiser steps"):
        measure({"steps": steps, "launch_time": 0, "first_forward_time": 1, "peak_rss_mib": 1}, warmup=4)


def test_conversion_writes_transformers4_names_and_keeps_the_weights(work_root: Path, tmp_path: Path):
    backbone = load_backbone(family="qwen2_vl", variant="tiny", tiny=TEST_TINY, cache_dir=str(work_root / "cache"))
    source = Path(backbone.model.name_or_path)
    target = tmp_path / "converted"
    changes = convert_for_transformers4(source, target)
    assert any("rope_scaling" in c for c in changes) and any("PreTrainedTokenizerFast" in c for c in changes)
    text = json.loads((target / "config.json").read_text())["text_config"]
    section = json.loads((source / "config.json").read_text())["text_config"]["rope_parameters"]["mrope_section"]
    assert "rope_parameters" not in text and text["rope_scaling"] == {"type": "mrope", "mrope_section": section}
    tokenizer = json.loads((target / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"
    image = json.loads((target / "preprocessor_config.json").read_text())
    assert image["min_pixels"] == image["size"]["shortest_edge"]
    assert (target / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert convert_for_transformers4(target, tmp_path / "again") == []  # already converted: nothing to change
