"""Safe loading: a checkpoint folder or training checkpoint from elsewhere cannot run code.

Each hostile input carries a payload that would create a marker file if it ever ran: a pickle whose unpickling calls
``open(marker, "w")`` (``pytorch_model.bin``, ``model.pt``, a Lightning ``.ckpt``), a ``config.json`` whose
``auto_map`` names ``modeling_evil.py`` (which writes the marker when imported), a tokenizer or image processor with
custom code. Loading goes through the project's own paths (``load_backbone`` from a local folder, ``evaluate.py
checkpoint=<folder>``, ``train.py ckpt_path=<file>`` and ``ckpt_path=auto``): each must refuse (or ignore) the
payload, and the marker must not exist afterwards. The whole-repository audits check that trust_remote_code is off
in every preset and that every ``torch.load`` passes ``weights_only=True``.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, TEST_TINY, small_run_overrides
from omegaconf import OmegaConf

from mllm_da.backbones.base import BackboneSpec
from mllm_da.backbones.loading import (
    UnsafeCheckpointError,
    check_checkpoint_folder,
    load_backbone,
    tiny_checkpoint,
)
from mllm_da.orchestration.evaluate import evaluate
from mllm_da.orchestration.train import train
from mllm_da.utils.io import read_json

REFUSED = "refused, nothing executed"
TINY = "{" + ",".join(f"{k}:{v}" for k, v in TEST_TINY.items()) + "}"
EVAL = [
    "model=tiny_qwen2_vl",
    f"model.backbone.tiny={TINY}",
    "domain.prepare.n_train=8",
    "domain.prepare.n_test=6",
    "domain.root=${paths.data_dir}/toy_eval",
    "limit=2",
    "max_new_tokens=4",
    "progress=false",
    "benchmarks=[toy_vqa]",
]


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "MARKER-code-ran"
    yield path
    assert not path.exists(), "a hostile payload ran"


@pytest.fixture(scope="module")
def tiny_folder(work_root: Path) -> Path:
    spec = BackboneSpec(family="qwen2_vl", variant="tiny", tiny=dict(TEST_TINY), cache_dir=str(work_root / ".cache"))
    return tiny_checkpoint(spec)


def copy_of(tiny_folder: Path, dest: Path) -> Path:
    shutil.copytree(tiny_folder, dest)
    return dest


def load(folder: Path, **extra):
    return load_backbone(family="qwen2_vl", variant="pretrained", source=str(folder), **extra)


def evil_module(folder: Path, name: str, marker: Path, body: str) -> None:
    (folder / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n{body}\n")


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------------ pickles


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt"])
def test_a_folder_with_only_pickle_weights_is_refused(
    name: str, tiny_folder: Path, tmp_path: Path, marker: Path, fault_tally
):
    folder = copy_of(tiny_folder, tmp_path / "evil")
    (folder / "model.safetensors").unlink()
    if name.endswith(".bin"):
        (folder / name).write_bytes(pickle.dumps({"weight": Payload(marker)}))
    else:
        torch.save({"state_dict": Payload(marker)}, folder / name)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(name)):
        load(folder)
    fault_tally.record("checkpoint folder", f"malicious pickle ({name}), no safetensors", REFUSED)


def test_a_pickle_beside_safetensors_is_never_read(tiny_folder: Path, tmp_path: Path, marker: Path, fault_tally):
    folder = copy_of(tiny_folder, tmp_path / "mixed")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload(marker)}))
    backbone = load(folder)  # weights come from model.safetensors; the pickle is not opened
    assert sum(p.numel() for p in backbone.model.parameters()) > 0
    fault_tally.record("checkpoint folder", "malicious pickle beside safetensors (ignored)", REFUSED)


def test_evaluate_checkpoint_folder_with_pickle_weights_is_refused(
    compose_cfg, tiny_folder: Path, tmp_path: Path, marker: Path, fault_tally
):
    run = tmp_path / "train_run"
    folder = copy_of(tiny_folder, run / "export")  # evaluate.py checkpoint=<train run> looks in export/
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    out = tmp_path / "eval"
    with pytest.raises(UnsafeCheckpointError, match="pickles"):
        evaluate(compose_cfg([*EVAL, f"checkpoint={run}"], config_name="evaluate", output_dir=out))
    summary = read_json(out / "summary.json")
    assert summary["status"] == "failed" and "pytorch_model.bin" in summary["error"]
    fault_tally.record("checkpoint folder", "malicious pickle via evaluate.py checkpoint=", REFUSED)


# ------------------------------------------------------------------------------------------------ custom code


@pytest.mark.parametrize("where", ["config", "tokenizer", "image_processor"])
def test_custom_code_in_a_folder_is_refused_and_never_imported(
    where: str, tiny_folder: Path, tmp_path: Path, marker: Path, fault_tally
):
    folder = copy_of(tiny_folder, tmp_path / "evil")
    if where == "config":
        evil_module(folder, "configuration_evil", marker, "from transformers import Qwen2VLConfig as EvilConfig")
        evil_module(
            folder, "modeling_evil", marker, "from transformers import Qwen2VLForConditionalGeneration as EvilModel"
        )
        edit_json(
            folder / "config.json",
            auto_map={
                "AutoConfig": "configuration_evil.EvilConfig",
                "AutoModelForImageTextToText": "modeling_evil.EvilModel",
            },
        )
        config = "config.json"
    elif where == "tokenizer":
        evil_module(
            folder, "tokenization_evil", marker, "from transformers import PreTrainedTokenizerFast as EvilTokenizer"
        )
        edit_json(
            folder / "tokenizer_config.json",
            tokenizer_class="EvilTokenizer",
            auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
        )
        config = "tokenizer_config.json"
    else:
        evil_module(
            folder,
            "image_processing_evil",
            marker,
            "from transformers import Qwen2VLImageProcessor as EvilImageProcessor",
        )
        edit_json(
            folder / "preprocessor_config.json",
            image_processor_type="EvilImageProcessor",
            auto_map={"AutoImageProcessor": "image_processing_evil.EvilImageProcessor"},
        )
        config = "preprocessor_config.json"
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"{folder / config} asks for custom code")):
        load(folder)
    fault_tally.record("checkpoint folder", f"auto_map remote code ({config})", REFUSED)


def test_evaluate_checkpoint_folder_with_auto_map_is_refused(
    compose_cfg, tiny_folder: Path, tmp_path: Path, marker: Path, fault_tally
):
    folder = copy_of(tiny_folder, tmp_path / "evil")
    evil_module(folder, "modeling_evil", marker, "from transformers import Qwen2VLForConditionalGeneration as M")
    edit_json(folder / "config.json", auto_map={"AutoModelForImageTextToText": "modeling_evil.M"})
    out = tmp_path / "eval"
    with pytest.raises(UnsafeCheckpointError, match="trust_remote_code=true"):
        evaluate(compose_cfg([*EVAL, f"checkpoint={folder}"], config_name="evaluate", output_dir=out))
    assert read_json(out / "summary.json")["status"] == "failed"
    fault_tally.record("checkpoint folder", "auto_map remote code via evaluate.py checkpoint=", REFUSED)


def test_trust_remote_code_is_off_in_every_preset_and_by_default(compose_cfg, fault_tally):
    assert BackboneSpec(family="qwen2_vl").trust_remote_code is False
    presets = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    for preset in presets:
        cfg = compose_cfg([f"model={preset}"])
        assert OmegaConf.select(cfg, "model.backbone.trust_remote_code", default=False) is False, preset
    for preset in sorted(p.stem for p in (CONF / "synthesizer").glob("*.yaml")):
        cfg = compose_cfg([f"synthesizer={preset}"], config_name="synth")
        assert OmegaConf.select(cfg, "model.backbone.trust_remote_code", default=False) is False, preset
    fault_tally.record("configuration", "trust_remote_code default", "accepted (valid input)", count=len(presets))


def test_the_check_passes_a_clean_folder_and_honours_an_explicit_opt_in(tiny_folder: Path, tmp_path: Path):
    check_checkpoint_folder(tiny_folder)
    folder = copy_of(tiny_folder, tmp_path / "custom")
    edit_json(folder / "config.json", auto_map={"AutoConfig": "configuration_x.X"})
    with pytest.raises(UnsafeCheckpointError):
        check_checkpoint_folder(folder)
    check_checkpoint_folder(folder, trust_remote_code=True)  # the user's explicit choice


# ------------------------------------------------------------------------------------------------ .ckpt resume

TRAIN = [*small_run_overrides("qwen2_vl", steps=2), "checkpoint.every_n_steps=1", "export=false", "eval.enabled=false"]


@pytest.mark.parametrize("how", ["explicit", "auto"])
def test_a_malicious_lightning_checkpoint_is_refused_on_resume(
    how: str, compose_cfg, tmp_path: Path, marker: Path, monkeypatch, fault_tally
):
    """A zip-format .ckpt whose pickle runs code: train.py ckpt_path=<it> (or ckpt_path=auto finding it as the run's
    last.ckpt) fails with the unpickler's refusal. TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (which turns torch's default to
    unsafe) is set to show that the project asks for weights_only=True itself."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt" if how == "auto" else tmp_path / "elsewhere.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"global_step": 1, "state_dict": {}, "pytorch-lightning_version": "2.6.6", "evil": Payload(marker)}, ckpt
    )
    cfg = compose_cfg([*TRAIN, f"ckpt_path={ckpt if how == 'explicit' else 'auto'}"], output_dir=run)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(cfg)
    summary = read_json(run / "summary.json")
    assert summary["status"] == "failed" and "UnpicklingError" in summary["error"]
    fault_tally.record("training checkpoint (.ckpt)", f"malicious pickle (ckpt_path={how})", REFUSED)


def test_a_plain_pickle_posing_as_a_checkpoint_is_refused_before_loading(
    compose_cfg, tmp_path: Path, marker: Path, fault_tally
):
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))  # not torch's zip format
    cfg = compose_cfg([*TRAIN, f"ckpt_path={ckpt}"], output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=re.escape(f"ckpt_path={ckpt}: truncated or not a torch checkpoint")):
        train(cfg)
    fault_tally.record("training checkpoint (.ckpt)", "legacy pickle file", REFUSED)


def test_evaluate_refuses_a_lightning_checkpoint_file(compose_cfg, tmp_path: Path, marker: Path, fault_tally):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"evil": Payload(marker)}, ckpt)
    with pytest.raises(ValueError, match="Lightning training checkpoint"):
        evaluate(compose_cfg([*EVAL, f"checkpoint={ckpt}"], config_name="evaluate", output_dir=tmp_path / "eval"))
    fault_tally.record("training checkpoint (.ckpt)", "malicious pickle via evaluate.py checkpoint=", REFUSED)


# ------------------------------------------------------------------------------------------------ audits


def test_every_torch_load_in_the_project_is_weights_only():
    """Ours: each ``torch.load(`` call in mllm_da/ and the entry points passes ``weights_only=True``; the Lightning
    resume passes it too (trainer.fit(..., weights_only=True) in training/fit.py)."""
    sources = [*(ROOT / "mllm_da").rglob("*.py"), *(ROOT / n for n in ("train.py", "evaluate.py", "synth.py"))]
    calls = []
    for path in sources:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[match.start() : end + 1]
            calls.append((path, call))
            assert "weights_only=True" in call, f"{path}: {call}"
    assert calls, "expected at least the checkpoint-step reader"
    fit_py = (ROOT / "mllm_da" / "training" / "fit.py").read_text()
    assert re.search(r"trainer\.fit\([^)]*weights_only=True", fit_py)
