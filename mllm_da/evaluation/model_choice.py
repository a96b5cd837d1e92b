"""Which model ``evaluate.py`` and ``predict.py`` load: the ``model=`` preset itself, or a saved folder
(``checkpoint=``, or a train run's ``export/``) loaded with the preset's family, image settings and chat format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf, open_dict

from mllm_da.backbones.loading import check_checkpoint_folder


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A plain-transformers folder from ``checkpoint=``: the folder, or a train run folder's ``export/``. A Lightning
    ``.ckpt`` is refused without being read (it is a pickle); :func:`backbone_config` then checks the folder
    (:func:`~mllm_da.backbones.loading.check_checkpoint_folder`) before anything in it is loaded."""
    path = Path(checkpoint).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        raise ValueError(
            f"checkpoint={path} is a Lightning training checkpoint; evaluate the exported folder "
            "(<run>/export) "
            "or resume training from it with train.py ckpt_path=..."
        )
    for folder in (path, path / "export"):
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(f"checkpoint={path}: no config.json there or in {path / 'export'} (a saved model folder)")


def backbone_config(cfg: DictConfig) -> DictConfig:
    """The ``model.backbone`` node, pointed at ``checkpoint`` (variant=pretrained, source=folder) when one is
    set.

    The preset still decides the family, image settings and chat format, so its family must match the
    checkpoint's.
    """
    # the backbone node is a mapping
    node = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg.model.backbone, resolve=True)))
    checkpoint = cfg.get("checkpoint")
    if not checkpoint:
        return node
    folder = resolve_checkpoint(checkpoint)
    # before anything in it is read: no custom code (unless the preset trusts it), no pickle-only weights
    check_checkpoint_folder(folder, bool(node.get("trust_remote_code", False)))
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type and model_type != node.family:
        raise ValueError(
            f"checkpoint {folder} is a {model_type} model but model.backbone.family is {node.family}; "
            f"pick the model= preset of that family (e.g. model=tiny_{model_type} for a tiny one)"
        )
    with open_dict(node):
        node.variant = "pretrained"
        node.source = str(folder)
    return node


def column_name(cfg: DictConfig, backbone_node: DictConfig) -> str:
    """The score table's column: ``label`` if set, else the checkpoint or the preset's source/variant."""
    if cfg.get("label"):
        return str(cfg.label)
    name = str(cfg.checkpoint) if cfg.get("checkpoint") else str(backbone_node.get("source") or "")
    name = name or f"{backbone_node.family} ({backbone_node.variant})"
    return name + (" + shuffled images" if cfg.get("shuffle_images") else "")
