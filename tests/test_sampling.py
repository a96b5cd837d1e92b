"""Record-seeded sampling: the right distribution, the top-p cut, and independence from the batch."""

from __future__ import annotations

import pytest
import torch

from mllm_da.synthesis.sampling import RecordSeededSampler, SamplingConfig, record_seed


def _picks(config: SamplingConfig, logits: torch.Tensor, seeds: list[int], steps: int = 1) -> list[list[int]]:
    sampler = RecordSeededSampler(config, seeds)
    ids = torch.zeros((len(seeds), 5), dtype=torch.long)
    out = []
    for _ in range(steps):
        scores = sampler(ids, logits.repeat(len(seeds), 1))
        picks = scores.argmax(dim=-1)
        out.append(picks.tolist())
        ids = torch.cat([ids, picks[:, None]], dim=1)
    return [list(column) for column in zip(*out)]


def test_samples_follow_the_tempered_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    seeds = [record_seed(0, f"r{i}") for i in range(6000)]
    picks = torch.tensor([p[0] for p in _picks(SamplingConfig(temperature=1.0), logits, seeds)])
    shares = torch.bincount(picks, minlength=3).float() / len(seeds)
    assert torch.allclose(shares, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)
    cold = torch.tensor([p[0] for p in _picks(SamplingConfig(temperature=0.25), logits, seeds[:2000])])
    assert (cold == 0).float().mean() > 0.85  # a low temperature sharpens towards the top token


def test_top_p_never_picks_outside_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.07, 0.03]]))
    seeds = [record_seed(1, f"r{i}") for i in range(2000)]
    picks = {p[0] for p in _picks(SamplingConfig(temperature=1.0, top_p=0.8), logits, seeds)}
    assert picks == {0, 1}


def test_a_record_draws_the_same_tokens_whatever_shares_its_batch():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(3))
    config = SamplingConfig(temperature=1.0, top_p=0.95)
    alone = _picks(config, logits, [record_seed(0, "x")], steps=6)[0]
    batched = _picks(config, logits, [record_seed(0, "a"), record_seed(0, "x"), record_seed(0, "b")], steps=6)
    assert batched[1] == alone and batched[0] != alone
    assert _picks(config, logits, [record_seed(1, "x")], steps=6)[0] != alone  # the run's seed matters


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    assert SamplingConfig().greedy and not SamplingConfig(temperature=0.7).greedy


def test_greedy_answers_samples_the_first_turn_only():
    """With ``greedy_answers`` a row is sampled until it has written a turn end; from then on its scores are the
    model's own (the greedy pick), while a row still in its first turn keeps being sampled."""
    turn_end = 9
    config = SamplingConfig(temperature=1.0, greedy_answers=True)
    logits = torch.log(torch.tensor([[0.4, 0.35, 0.25] + [1e-9] * 7]))
    seeds = [record_seed(0, f"r{i}") for i in range(400)]
    sampler = RecordSeededSampler(config, seeds, turn_end_ids=[turn_end])
    prompt = torch.zeros((len(seeds), 4), dtype=torch.long)
    first = sampler(prompt, logits.repeat(len(seeds), 1)).argmax(dim=-1)
    assert set(first.tolist()) == {0, 1, 2}  # sampled: not always the top token
    # half the rows have ended their first turn: those answer greedily, the others are still sampled
    written = torch.where(torch.arange(len(seeds))[:, None] % 2 == 0, turn_end, 1)
    second = sampler(torch.cat([prompt, written], dim=1), logits.repeat(len(seeds), 1)).argmax(dim=-1)
    assert (second[0::2] == 0).all() and set(second[1::2].tolist()) == {0, 1, 2}
    # a turn end in the prompt does not count: only what the row wrote
    fresh = RecordSeededSampler(config, seeds, turn_end_ids=[turn_end])
    assert len(set(fresh(torch.full((len(seeds), 4), turn_end), logits.repeat(len(seeds), 1)).argmax(-1).tolist())) == 3
    with pytest.raises(ValueError, match="turn end"):
        RecordSeededSampler(config, seeds)


def test_greedy_answers_is_refused_for_vllm_and_left_out_of_old_cache_keys(compose_cfg):
    from mllm_da.synthesis.generate import sampling_settings

    sampled = ["synthesis.sampling.temperature=0.7"]
    assert "greedy_answers" not in sampling_settings(compose_cfg(sampled, config_name="synth"))
    both = compose_cfg([*sampled, "synthesis.sampling.greedy_answers=true"], config_name="synth")
    assert sampling_settings(both)["greedy_answers"] is True
    vllm = compose_cfg(
        [*sampled, "synthesis.sampling.greedy_answers=true", "synthesis.backend=vllm"], config_name="synth"
    )
    with pytest.raises(ValueError, match="greedy_answers"):
        sampling_settings(vllm)
