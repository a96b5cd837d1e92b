"""Turning a ``domain`` config node into the files a run reads: one step shared by train, synth and evaluate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict


@dataclass(frozen=True)
class DomainFiles:
    """Where a domain's training inputs are (all paths absolute or relative to the working directory)."""

    name: str
    image_root: str
    image_caption_pairs: str
    rule_tasks: str | None = None
    external_tasks: str | None = None


def prepare_domain(domain: DictConfig) -> DomainFiles:
    """Run the domain's ``prepare`` hook, if any, and return where its files are.

    A hook may build the data (the toy domain draws its images) or find it: one that returns a mapping (the custom
    domain: the files it found or converted, its benchmarks) has those keys written into ``domain``, so the
    ``${domain.*}`` interpolations of the benchmark and eval configs see them.
    """
    if domain.get("prepare"):
        found = instantiate(domain.prepare, _convert_="all")
        if isinstance(found, Mapping):
            with open_dict(domain):
                for key, value in found.items():
                    domain[key] = value
    return DomainFiles(
        name=domain.name,
        image_root=domain.image_root,
        image_caption_pairs=domain.image_caption_pairs,
        rule_tasks=domain.get("rule_tasks"),
        external_tasks=domain.get("external_tasks"),
    )
