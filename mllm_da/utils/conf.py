"""The package's ``conf/`` directory and what is discovered from it when configs are composed.

Benchmarks are discovered, not listed: every ``conf/benchmark/*.yaml`` is composed into the ``benchmark`` node by
the option ``benchmark: all`` (registered here in Hydra's ConfigStore, its defaults list read from the directory),
and a domain's default selection is ``${mllm_da.domain_benchmarks:<domain name>}``: the definitions whose
``domains`` name it, in their ``order``. Adding a benchmark is adding its YAML (README "Evaluation").
:func:`register_conf_catalog` runs when :mod:`mllm_da` is imported, before any config is composed or resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: the option of the ``benchmark`` group that composes every benchmark definition
ALL_BENCHMARKS = "all"
DOMAIN_BENCHMARKS_RESOLVER = "mllm_da.domain_benchmarks"


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: the names of ``conf/<group>/*.yaml``, sorted."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def domain_benchmarks(domain: str, definitions: Mapping[str, Any]) -> list[str]:
    """Names of the benchmark definitions whose ``domains`` list holds ``domain``, by ``order`` then name."""
    chosen = []
    for name, node in definitions.items():
        if isinstance(node, (Mapping, DictConfig)) and domain in (node.get("domains") or ()):
            chosen.append((node.get("order") or 0, name))
    return [name for _, name in sorted(chosen)]


def _domain_benchmarks_resolver(domain: str, *, _root_: DictConfig) -> list[str]:
    return domain_benchmarks(str(domain), _root_.get("benchmark") or {})


def register_conf_catalog(conf_dir: Path = CONF_DIR) -> None:
    """Register ``benchmark: all`` (every benchmark YAML in ``conf_dir``) and the domain-benchmarks resolver."""
    names = [name for name in group_options("benchmark", conf_dir) if name != ALL_BENCHMARKS]
    ConfigStore.instance().store(group="benchmark", name=ALL_BENCHMARKS, node={"defaults": [*names, "_self_"]})
    OmegaConf.register_new_resolver(DOMAIN_BENCHMARKS_RESOLVER, _domain_benchmarks_resolver, replace=True)
