"""Shared fixtures: offline environment, a small toy domain, composed real configs with tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import mllm_da  # noqa: E402, F401  (registers `benchmark: all` and the domain-benchmarks resolver)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_next", "mllama")

torch.set_num_threads(2)

#: small tiny models for tests (the presets' sizes are for learning the toy domain)
TEST_TINY = {"hidden": 64, "intermediate": 128, "layers": 1, "vision_hidden": 32, "vision_layers": 1, "vocab": 400}


@pytest.fixture(scope="session")
def work_root(tmp_path_factory) -> Path:
    """One root for the session: tiny checkpoints and the toy domain are built once and shared."""
    return tmp_path_factory.mktemp("mllm_da_root")


@pytest.fixture(scope="session")
def compose_cfg(work_root: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<config_name>.yaml`` with overrides, as the entry point would, minus Hydra's run dir."""

    def _compose(overrides: Sequence[str] = (), config_name: str = "train", output_dir: Path | None = None):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=[f"paths.root_dir={work_root}", *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir or work_root / "run")
        return cfg

    return _compose


@pytest.fixture(scope="session")
def synth_inputs(work_root: Path) -> list:
    """Ten synthesis inputs (caption and image) from the small toy domain."""
    from mllm_da import toy
    from mllm_da.data.records import read_conversations
    from mllm_da.synthesis.runner import SynthesisInput

    files = toy.build_toy_domain(work_root / "data" / "toy_small", n_train=48, n_test=8)
    conversations, _ = read_conversations(files.caption_pairs, image_root=files.root)
    return [SynthesisInput(c.id, c.turns[1].content, str(c.images[0])) for c in conversations[:10]]


@pytest.fixture(scope="session")
def synth_backbone(work_root: Path) -> dict:
    """``load_backbone`` keywords of a small tiny LLaVA-NeXT synthesizer."""
    return {
        "family": "llava_next",
        "variant": "tiny",
        "tiny": dict(TEST_TINY),
        "image": {"image_mean": [0.96] * 3, "image_std": [0.5] * 3},
        "cache_dir": str(work_root / ".cache"),
    }


def small_run_overrides(family: str = "qwen2_vl", steps: int = 2) -> list[str]:
    """A few steps of a small tiny model on a small toy domain, with its own cache key per size."""
    tiny = ",".join(f"{k}:{v}" for k, v in TEST_TINY.items())
    return [
        f"model=tiny_{family}",
        f"model.backbone.tiny={{{tiny}}}",
        "domain.prepare.n_train=48",
        "domain.prepare.n_test=8",
        "domain.root=${paths.data_dir}/toy_small",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "data.micro_batch_size=4",
        "data.global_batch_size=4",
        "data.val_fraction=0.1",
        "checkpoint.every_n_steps=0",
        "logger=csv",
        "eval.limit=4",
        "eval.batch_size=4",
    ]
