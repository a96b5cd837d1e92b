"""The pipeline, in one place: what ``train.py``, ``synth.py``, ``evaluate.py`` and ``predict.py`` run.

``train``: check the config → prepare the domain → synthesize the mix's tasks if it needs them (cached) → build
each stage's data → build the model → fit each stage → export → evaluate. The layers below never call back up:
data readers do not synthesize, training does not evaluate, synthesizer tuning calls the training functions.
"""
