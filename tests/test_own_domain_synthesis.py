"""Synthesis on a user's own domain: the toy-tuned synthesizer is refused there, with the options to use."""

from __future__ import annotations

from pathlib import Path

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


def test_synth_summary_counts_input_records_read_kept_and_rejected_by_reason(compose_cfg, tmp_path):
    import json

    from mllm_da.synthesis.pipeline import synthesize
    from tests.test_custom_domain import _csv

    root = tmp_path / "mine"
    _csv(root)
    with open(root / "captions.csv", "a", encoding="utf-8") as handle:
        handle.write("missing.png,A caption of a picture that is not there.\n")
        handle.write("photo_0.png,A second caption of the first picture.\n")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    with open(root / "captions.csv", "a", encoding="utf-8") as handle:
        handle.write("broken.png,A picture that does not decode.\n")
    cfg = compose_cfg(["domain=custom", f"domain.root={root}", "synthesizer=rules"], config_name="synth",
                      output_dir=tmp_path / "run")
    synthesize(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["domain"]["captions"]["reasons"] == {"missing_image": 1}
    read = summary["data"]["image_caption_pairs"]
    # the missing image is refused while converting the CSV (the domain's own count); the undecodable one here
    assert (read["read"], read["kept"], read["rejected"]) == (8, 7, 1)
    assert read["reasons"] == {"bad_image": 1}
    assert read["rejects_path"] and "broken.png" in Path(read["rejects_path"]).read_text(encoding="utf-8")


def test_evaluate_summary_counts_benchmark_rows_read_kept_and_refused(compose_cfg, tmp_path):
    import json

    from mllm_da.evaluation.runner import evaluate
    from tests.test_custom_domain import BENCHMARK_ROWS, _benchmark, _csv

    root = tmp_path / "mine"
    _csv(root)
    _benchmark(root, [*BENCHMARK_ROWS, {"image": "bench/a.png", "question": "Q?", "answer": "x", "answer_type": "?"}])
    (root / "bench" / "c.png").write_bytes(b"not a png")
    with open(root / "benchmark.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"image": "bench/c.png", "question": "Q?", "answer": "x"}) + "\n")
    cfg = compose_cfg(["domain=custom", f"domain.root={root}", "bad_rows=skip"], config_name="evaluate",
                      output_dir=tmp_path / "run")
    evaluate(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["domain"]["benchmark"]["reasons"] == {"bad_answer_type": 1}  # refused while reading the file
    assert summary["data"]["custom_vqa"] == {"read": 5, "kept": 4, "rejected": 1, "reasons": {"bad_image": 1}}
    assert summary["data"]["custom_mc"] == {"read": 2, "kept": 2, "rejected": 0, "reasons": {}}
