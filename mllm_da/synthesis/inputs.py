"""What synthesis reads of a domain: its image-caption records, validated once, with refused records counted
and written to the rejects file."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mllm_da.data.records import BadRecordError, Conversation, read_conversations
from mllm_da.synthesis.cache import digest, file_digest
from mllm_da.synthesis.runner import SynthesisInput
from mllm_da.utils.io import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class DomainInputs:
    """The domain's image-caption records, validated once, and what synthesis reads of them."""

    captions: list[Conversation]
    inputs: list[SynthesisInput]
    image_root: Path
    digest: str
    #: records refused, by reason (the reader's reasons, plus duplicate_id and not_one_image)
    skipped: dict[str, int]
    #: read == kept + rejected + beyond_limit (records past ``synthesis.limit``); rejects_path lists the rejected
    counts: dict[str, int] = field(default_factory=dict)
    rejects_path: Path | None = None


def read_domain_inputs(cfg: DictConfig, rejects_dir: Path | None = None) -> DomainInputs:
    """Image-caption records of ``cfg.domain``; synthesis uses the first assistant turn (the caption).

    Each record is validated (images decoded) by :func:`read_conversations`; a record that is not one image with
    a caption, or repeats an earlier record's id, is refused too. Under ``cfg.bad_records=skip`` refused records
    are counted and written to ``<rejects_dir>/image_caption_pairs.jsonl`` (default: ``<output_dir>/rejects``);
    under ``fail`` the first one raises :class:`BadRecordError` naming file, line and field.
    """
    domain = cfg.domain
    path, root = Path(domain.image_caption_pairs), Path(domain.image_root)
    if rejects_dir is None and cfg.get("paths") is not None and cfg.paths.get("output_dir"):
        rejects_dir = Path(cfg.paths.output_dir) / "rejects"
    rejects_path = rejects_dir / "image_caption_pairs.jsonl" if rejects_dir else None
    policy = cfg.bad_records
    captions, report = read_conversations(path, image_root=root, policy=policy, rejects_path=rejects_path)
    limit = cfg.synthesis.get("limit")
    beyond = 0
    if limit is not None:
        beyond = max(0, len(captions) - int(limit))
        captions = captions[: int(limit)]
    seen: dict[str, str] = {}
    inputs, kept, skipped = [], [], Counter(report.reasons)
    extra: list[dict[str, Any]] = []

    def refuse(record: Conversation, where: str, key: str, reason: str) -> None:
        skipped[key] += 1
        location = record.source.rsplit(":", 1)[-1] if path.suffix == ".jsonl" else record.source.rsplit("#", 1)[-1]
        extra.append(
            {
                "source": record.source,
                "location": location,
                "reason_key": key,
                "field": where,
                "reason": reason,
                "raw": record.to_sharegpt(root),
            }
        )
        if policy == "fail":
            _append_rejects(rejects_path, extra)
            raise BadRecordError(path, location, record.source, where, key, reason)
        log.debug("%s: refused, field '%s': %s [%s]", record.source, where, reason, key)

    for record in captions:
        if record.id in seen:
            refuse(
                record,
                "id",
                "duplicate_id",
                f"record id {record.id!r} repeats {seen[record.id]}; ids must be unique",
            )
            continue
        seen[record.id] = record.source
        caption = next((t.content for t in record.turns if t.role == "assistant"), None)
        if len(record.images) != 1:
            refuse(
                record,
                "images",
                "not_one_image",
                f"an image-caption record needs exactly one image, got {len(record.images)}",
            )
            continue
        if caption is None:
            refuse(record, "messages", "no_caption", "the record has no assistant turn (the caption)")
            continue
        kept.append(record)
        inputs.append(SynthesisInput(record.id, caption, str(record.images[0])))
    _append_rejects(rejects_path, extra)
    counts = {
        "read": report.read,
        "kept": len(kept),
        "rejected": report.rejected + len(extra),
        "beyond_limit": beyond,
    }
    if extra:
        log.warning(
            "%s: refused %d more record(s) as image-caption pairs (%s)",
            path,
            len(extra),
            ", ".join(f"{k}={v}" for k, v in sorted(Counter(r["reason_key"] for r in extra).items())),
        )
    key = digest({"file": file_digest(path), "root": str(root.resolve()), "limit": limit})
    return DomainInputs(kept, inputs, root, key, dict(skipped), counts, rejects_path)


def _append_rejects(path: Path | None, rows: list[dict[str, Any]]) -> None:
    """Add rows to the rejects file :func:`read_conversations` wrote (ASCII-escaped JSON lines, like its own)."""
    if path is None or not rows:
        return
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, before + "".join(json.dumps(row) + "\n" for row in rows))
