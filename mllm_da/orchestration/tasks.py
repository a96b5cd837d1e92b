"""Synthesize if the mix needs it: a data mix whose tasks are synthesized (``data_mix=synthetic``, or
``rule_based`` on a domain without a rule_tasks file) is handed the task file before it is built. The synthesis
is cached, so every stage and every job of a sweep after the first reuses it."""

from __future__ import annotations

from mllm_da.data.domain import DomainFiles
from mllm_da.data.mixing import SynthesizedTasks
from mllm_da.data.weighted import AnyMix
from mllm_da.synthesis.task_file import synthetic_task_file


def provide_synthetic_tasks(mix: AnyMix, domain: DomainFiles, policy: str = "skip") -> None:
    """Synthesize (or reuse) the task file of each part of ``mix`` that reads synthesized tasks."""
    for part in mix.parts():
        if not part.synthesizes(domain):
            continue
        if not part.synthesis:
            raise ValueError(
                f"data_mix {part.name}: tasks={part.tasks} on domain {domain.name} needs a 'synthesis' node "
                "(see data_mix/synthetic.yaml)"
            )
        path, metrics = synthetic_task_file(domain, part.synthesis, policy=policy)
        part.synthesized = SynthesizedTasks(str(path), metrics)
