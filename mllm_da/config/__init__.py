"""Typed configs: one dataclass per config group node (its keys, types, ranges and choices), checked by the generic
mechanism of :mod:`mllm_da.utils.typed_config` when a run starts. ``train_nodes`` holds train.py's nodes,
``run_nodes`` synth.py's, evaluate.py's and predict.py's; :mod:`mllm_da.config_checks` the rules that span groups."""
