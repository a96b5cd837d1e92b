r"""Consistency filter (reference §3): is a triplet's precise answer consistent with its informative answer?

Three backends (``filter=`` presets):

* ``llm`` — a text-only causal LM (the reference uses the Llama-3-8B base model; no chat template, no image)
  completes a few-shot prompt; greedy, 2 new tokens; the label is the decoded text stripped and lower-cased, and
  only ``"yes"`` is kept. The project's prompt (:data:`DEFAULT_PROMPT`) is written in its own words with the
  reference's structure: an instruction paragraph, the three label definitions, six four-line demonstrations
  labelled No, Open, Yes, Yes, No, Open, then the test item ending with ``## Consistent:``. As in the reference,
  the demonstrations hold literal backslash sequences (``\n``, ``\"``, ``\u2014``) as text, and the fields are
  filled with ``str.format`` (keys ``Q``, ``informative_A``, ``precise_A``), so a user's prompt file
  (``filter.prompt_file``) in that form, the reference's included, drops straight in.
* ``heuristic`` — no model, for CPU runs; see :func:`heuristic_label` for exactly what it checks.
* ``none`` — keeps every triplet (label ``"unfiltered"``).

With ``synthesis.self_check`` the synthesizer has answered each triplet's question a second time, directly; the
``llm`` and ``heuristic`` filters then also drop a triplet whose second answer disagrees with its precise answer
(:func:`self_checked_label`), and ``none`` still keeps everything.
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from mllm_da.backbones.base import spec_hash
from mllm_da.backbones.llava_next import llama3_tokenizer, llama_text_config
from mllm_da.backbones.loading import check_checkpoint_folder
from mllm_da.synthesis.answers import ARTICLES, answers_agree, words
from mllm_da.synthesis.parse import Triplet
from mllm_da.utils.io import build_dir_once

log = logging.getLogger(__name__)

KEEP_LABEL = "yes"
UNFILTERED = "unfiltered"
#: the label of a triplet whose judging failed after its batch's retries and once alone (not kept)
FAILED = "failed"
PROMPT_FIELDS = {"Q", "informative_A", "precise_A"}
#: the label of a triplet the filter would keep whose self-check answer disagrees with its precise answer
SELF_CHECK_NO = "self_check_no"

DEFAULT_PROMPT = r"""You will see a question about a picture and two answers to it: an informative answer that explains in detail, and a precise answer that states only the result. Judge whether the precise answer agrees with the informative answer.

Choose one label:
Yes: they agree; the precise answer follows from what the informative answer says.
No: they disagree; the precise answer does not follow from what the informative answer says.
Open: the question has no single right answer: it can be read in more than one way, asks for an opinion or a free description such as a caption, or needs knowledge from outside the picture.

## Question: Which of these is used to boil water?\nA. kettle\nB. cutting board\nC. whisk\nD. colander
## Informative Answer: A kettle sits on the front burner of the stove with steam rising from its spout. A kettle is made for heating water, which makes A the right option.
## Precise Answer: C
## Consistent: No

## Question: What has changed between the left half and the right half of the picture?
## Informative Answer: On the left the tree is in full leaf, while on the right its branches are bare and covered in snow \u2014 the same tree in summer and in winter.
## Precise Answer: The season.
## Consistent: Open

## Question: Which animal is curled up on the sofa?\nA. a rabbit\nB. a cat\nC. a parrot\nD. a turtle
## Informative Answer: A small striped animal with pointed ears and long whiskers lies curled on the cushions. It is a cat.
## Precise Answer: B
## Consistent: Yes

## Question: Was this photo taken outdoors?
## Informative Answer: Yes. There is open sky above, trees line a gravel path and sunlight falls on the grass, so the scene is outside.
## Precise Answer: Yes
## Consistent: Yes

## Question: How many chairs stand around the table?
## Informative Answer: Four wooden chairs are placed around the round table, one on each side of it.
## Precise Answer: 2
## Consistent: No

## Question: Give the photo a short caption and say in which city the tower stands.
## Informative Answer: An iron lattice tower rises above a park at dusk. A fitting caption is \"Evening at the tower\"; the tower is the Eiffel Tower, which stands in Paris.
## Precise Answer: The Eiffel Tower at dusk, Paris.
## Consistent: Open

## Question: {Q}
## Informative Answer: {informative_A}
## Precise Answer: {precise_A}
## Consistent:"""


def load_prompt(prompt_file: str | None) -> str:
    """The filter prompt: a user's file, checked to use exactly the three fields, or :data:`DEFAULT_PROMPT`."""
    if not prompt_file:
        return DEFAULT_PROMPT
    path = Path(prompt_file)
    if not path.is_file():
        raise FileNotFoundError(f"filter.prompt_file: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise ValueError(
            f"filter.prompt_file {path}: not a str.format template ({err}); double literal braces"
        ) from err
    if fields != PROMPT_FIELDS:
        raise ValueError(
            f"filter.prompt_file {path}: uses fields {sorted(fields)}; it must use exactly {sorted(PROMPT_FIELDS)}"
        )
    return text


def build_prompt(template: str, triplet: Triplet) -> str:
    return template.format(**triplet.as_fields())


def parse_label(text: str) -> str:
    """The judge's label: its text stripped and lower-cased (so ``"Yes."`` is ``"yes."``, which is not kept)."""
    return text.strip().lower()


def is_kept(label: str) -> bool:
    return label in (KEEP_LABEL, UNFILTERED)


def _words(text: str) -> list[str]:
    return [w for w in words(text) if w not in ARTICLES]


def self_check_agrees(row: Mapping[str, Any], triplet: Triplet) -> bool | None:
    """Whether a parsed row's self-check answer states the triplet's precise answer
    (:func:`~mllm_da.synthesis.answers.answers_agree`); None when the set was synthesized without a self-check."""
    if "self_check" not in row:
        return None
    answer = row["self_check"]
    return answer is not None and answers_agree(answer, triplet.precise, triplet.question)


def self_checked_label(label: str, agrees: bool | None) -> str:
    """A label the filter keeps becomes :data:`SELF_CHECK_NO` when the self-check disagrees; others stay."""
    return SELF_CHECK_NO if agrees is False and is_kept(label) else label


def heuristic_label(triplet: Triplet) -> str:
    """A model-free stand-in for the judge. Exactly:

    1. both answers are lower-cased, every run of characters other than a-z and 0-9 becomes a space, they are
       split into words, and the articles a/an/the are dropped;
    2. if the precise answer has no word left, the label is ``"open"``;
    3. if every word of the precise answer occurs among the informative answer's words, ``"yes"``;
    4. otherwise ``"no"``.

    It catches a precise answer that the informative one contradicts or never states (a different number,
    colour, option letter or yes/no), not paraphrases, and it has no notion of open-ended questions.
    """
    precise = _words(triplet.precise)
    if not precise:
        return "open"
    informative = set(_words(triplet.informative))
    return "yes" if all(w in informative for w in precise) else "no"


def judge_stop_id(tokenizer: Any, stop_token: str | None) -> int:
    """The token that ends the judge's answer: ``stop_token`` when the tokenizer knows it, else its EOS."""
    stop = tokenizer.convert_tokens_to_ids(stop_token) if stop_token else None
    if stop is None or stop == tokenizer.unk_token_id:
        stop = tokenizer.eos_token_id
    return int(stop)


class LLMJudge:
    """Batched greedy completion of the filter prompt by a text-only causal LM (left-padded)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 2,
        max_length: int = 8192,
        stop_token: str | None = "<|end_of_text|>",
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.device = torch.device(device)
        self.stop_id = stop = judge_stop_id(tokenizer, stop_token)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop

    @torch.inference_mode()
    def labels(self, prompts: Sequence[str]) -> list[str]:
        """One label per prompt; a prompt longer than ``max_length`` tokens gets the label ``"too_long"``."""
        encoded = [self.tokenizer(p)["input_ids"] for p in prompts]
        out = ["too_long"] * len(prompts)
        slots = [i for i, ids in enumerate(encoded) if len(ids) + self.max_new_tokens <= self.max_length]
        if not slots:
            return out
        width = max(len(encoded[i]) for i in slots)
        ids = torch.full((len(slots), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(slots), width), dtype=torch.long)
        for row, i in enumerate(slots):
            n = len(encoded[i])
            ids[row, width - n :] = torch.tensor(encoded[i])
            mask[row, width - n :] = 1
        generated = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_id,
            pad_token_id=self.pad_id,
        )[:, width:]
        for row, i in enumerate(slots):
            tokens = generated[row].tolist()
            if self.stop_id in tokens:
                tokens = tokens[: tokens.index(self.stop_id)]
            out[i] = parse_label(self.tokenizer.decode(tokens, skip_special_tokens=True))
        return out


def tiny_judge_checkpoint(cache_dir: str, sizes: Mapping[str, Any], seed: int = 0) -> Path:
    """A tiny random Llama-style causal LM with the offline Llama-3-style tokenizer, built once (tests, CPU)."""
    folder = Path(cache_dir) / "tiny" / f"judge-{spec_hash({'sizes': dict(sizes), 'seed': seed})}"

    def build(tmp: Path) -> None:
        tokenizer = llama3_tokenizer(sizes, "")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**llama_text_config(tokenizer, sizes)))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    build_dir_once(folder, build)
    return folder


def judge_source(settings: Mapping[str, Any], cache_dir: str) -> str:
    """The judge's folder or hub id from a ``filter=`` preset (``model.variant``: pretrained or tiny), checked to
    run no code (no auto_map, safetensors weights only)."""
    model_cfg = settings["model"]
    if model_cfg["variant"] == "tiny":
        source = str(tiny_judge_checkpoint(cache_dir, model_cfg.get("tiny") or {}))
    elif model_cfg["variant"] == "pretrained":
        source = model_cfg["source"]
    else:
        raise ValueError(f"filter.model.variant must be pretrained or tiny, got {model_cfg['variant']!r}")
    check_checkpoint_folder(source)
    return source


def load_judge(settings: Mapping[str, Any], cache_dir: str, device: str) -> LLMJudge:
    """The ``llm`` backend's judge from a ``filter=`` preset (``model.variant``: pretrained or tiny)."""
    source = judge_source(settings, cache_dir)
    dtype = getattr(torch, settings["model"].get("dtype") or "float32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except OSError as err:
        raise OSError(
            f"filter.model.source={source!r} could not be loaded ({err}); offline, point it at a local folder"
        ) from err
    return LLMJudge(
        model,
        tokenizer,
        max_new_tokens=int(settings["max_new_tokens"]),
        max_length=int(settings["max_length"]),
        stop_token=settings.get("stop_token"),
        device=device,
    )


def label_counts(labels: Sequence[str]) -> dict[str, int]:
    """Counts per label, with anything outside yes/no/open (and the backends' own labels) as ``other``."""
    known = {"yes", "no", "open", UNFILTERED, "too_long", FAILED, SELF_CHECK_NO}
    counts = Counter(label if label in known else "other" for label in labels)
    return dict(sorted(counts.items()))
