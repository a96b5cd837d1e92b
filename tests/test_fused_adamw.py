"""The optimiser train.py builds: torch's fused AdamW on CPU as on CUDA, the same updates as the per-tensor loop."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TEST_TINY

from mllm_da.backbones.loading import load_backbone
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.training.module import MLLMModule, OptimConfig, fused_adamw_supported


def test_fused_adamw_is_supported_for_float_parameters_on_one_cpu_or_cuda_device():
    cpu = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    assert fused_adamw_supported(cpu)
    assert not fused_adamw_supported([*cpu, torch.nn.Parameter(torch.zeros(3, device="meta"))])  # spread out
    assert not fused_adamw_supported([torch.zeros(3, dtype=torch.int64)])


@pytest.fixture(scope="module")
def module_factory(work_root: Path):
    def make(fused: bool) -> MLLMModule:
        backbone = load_backbone(
            family="qwen2_vl", variant="tiny", tiny=TEST_TINY, cache_dir=str(work_root / "cache"), seed=0
        )
        optim = OptimConfig(lr=1e-2, weight_decay=0.01, warmup_ratio=0.0, fused=fused)
        return MLLMModule(backbone, FinetuneConfig(), optim)

    return make


def test_train_py_optimiser_is_fused_on_cpu_and_updates_as_the_loop_does(module_factory, monkeypatch):
    monkeypatch.setattr(MLLMModule, "trainer", SimpleNamespace(estimated_stepping_batches=10))
    modules = {fused: module_factory(fused) for fused in (True, False)}
    optimizers = {fused: m.configure_optimizers()["optimizer"] for fused, m in modules.items()}
    assert all(g["fused"] for g in optimizers[True].param_groups)
    assert not any(g["fused"] for g in optimizers[False].param_groups)
    params = {fused: [p for p in m.model.parameters() if p.requires_grad] for fused, m in modules.items()}
    for a, b in zip(params[True], params[False], strict=True):
        assert torch.equal(a, b)
    initial = [p.detach().clone() for p in params[True]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(params[True], params[False], strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        for optimizer in optimizers.values():
            optimizer.step()
    for a, b, before in zip(params[True], params[False], initial, strict=True):
        assert not torch.equal(a, before)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
