"""Synthesis on a user's own domain: the toy-tuned synthesizer is refused there, with the options to use."""

from __future__ import annotations

import pytest

from mllm_da.config_checks import ConfigError, check_synth_config


@pytest.mark.parametrize("domain", ["custom", "biomed"])
def test_a_toy_seed_synthesizer_is_refused_on_another_domain_naming_the_options(compose_cfg, domain: str):
    cfg = compose_cfg([f"domain={domain}"], config_name="synth")
    with pytest.raises(ConfigError) as caught:
        check_synth_config(cfg)
    message = str(caught.value)
    for option in ("synthesizer=adamllm", "seed_data.source=visionflan", "synthesizer=rules",
                   "seed_data.allow_on_other_domains=true"):
        assert option in message


def test_the_refusal_is_lifted_by_the_options_it_names(compose_cfg, tmp_path):
    for overrides in (["synthesizer=rules"], ["seed_data.allow_on_other_domains=true"],
                      [f"synthesizer.checkpoint={tmp_path}"], ["domain=toy"]):
        check_synth_config(compose_cfg(["domain=custom", *overrides], config_name="synth"))


def test_train_with_data_mix_synthetic_on_a_custom_domain_is_refused_before_training(compose_cfg, tmp_path):
    from mllm_da.training.run import train
    from tests.test_custom_domain import _csv

    root = tmp_path / "mine"
    _csv(root)
    cfg = compose_cfg(["domain=custom", f"domain.root={root}", "data_mix=synthetic"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="toy seed set"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
