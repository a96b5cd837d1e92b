"""A backbone's conversation format as data: one Python renderer that knows which characters carry loss.

The same format also produces the Jinja chat template saved with tiny and exported checkpoints, so that training,
generation and a plain-transformers user all see the same prompt (a test checks the two renderings agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mllm_da.utils.conversation import IMAGE_PLACEHOLDER, Turn

MaskMode = Literal["assistant", "synthesizer"]


@dataclass(frozen=True)
class ChatFormat:
    """Strings around each role's content; ``{role}`` is not templated: each role has its own prefix.

    ``assistant_end`` closes an assistant turn and is trained with it; ``turn_suffix`` follows every turn's end
    token and is never trained in assistant mode (Qwen's ``\\n`` after ``<|im_end|>``).
    """

    bos: str = ""
    system_prefix: str = ""
    user_prefix: str = ""
    assistant_prefix: str = ""
    turn_end: str = ""
    turn_suffix: str = ""
    default_system: str | None = None
    image_text: str = "<image>"
    #: token appended (and trained) in synthesizer mode, so generation stops on it (reference §1.3)
    synthesizer_end: str = ""
    #: strings that end a generated answer
    stop_strings: tuple[str, ...] = ()

    def prefix(self, role: str) -> str:
        return {"system": self.system_prefix, "user": self.user_prefix, "assistant": self.assistant_prefix}[role]

    def content_text(self, content: str) -> str:
        """Replace the dataset's ``<image>`` marker with the backbone's image text."""
        return content.replace(IMAGE_PLACEHOLDER, self.image_text)

    def render(
        self,
        turns: Sequence[Turn],
        *,
        mode: MaskMode = "assistant",
        add_generation_prompt: bool = False,
        system: str | None = None,
    ) -> tuple[str, list[tuple[int, int]]]:
        """Render turns to text and return the character spans that carry loss.

        ``assistant`` mode trains each assistant content plus its end token. ``synthesizer`` mode masks the whole
        first round (system, first user and first assistant turn) and trains everything after it, user turns and
        role headers included, plus a trailing ``synthesizer_end`` (reference §1.3).
        """
        pieces: list[str] = [self.bos]
        spans: list[tuple[int, int]] = []
        cursor = len(self.bos)
        has_system = bool(turns) and turns[0].role == "system"
        system_text = system if system is not None else self.default_system
        if not has_system and system_text is not None:
            text = self.system_prefix + system_text + self.turn_end + self.turn_suffix
            pieces.append(text)
            cursor += len(text)
        assistant_seen = 0
        synth_start: int | None = None
        for turn in turns:
            if mode == "synthesizer" and synth_start is None and assistant_seen >= 1:
                synth_start = cursor
            head = self.prefix(turn.role)
            body = self.content_text(turn.content) + self.turn_end
            pieces.extend([head, body, self.turn_suffix])
            if turn.role == "assistant":
                assistant_seen += 1
                if mode == "assistant":
                    spans.append((cursor + len(head), cursor + len(head) + len(body)))
            cursor += len(head) + len(body) + len(self.turn_suffix)
        if mode == "synthesizer":
            pieces.append(self.synthesizer_end)
            cursor += len(self.synthesizer_end)
            if synth_start is not None:
                spans.append((synth_start, cursor))
        if add_generation_prompt:
            pieces.append(self.assistant_prefix)
        return "".join(pieces), spans

    def to_jinja(self) -> str:
        """A Jinja chat template equivalent to :meth:`render` (assistant mode), with HF generation markers."""

        def lit(text: str) -> str:
            return "{{ " + repr(text) + " }}" if text else ""

        image = repr(self.image_text)
        parts = [
            lit(self.bos),
            "{%- set has_system = messages and messages[0]['role'] == 'system' -%}",
        ]
        if self.default_system is not None:
            parts.append(
                "{%- if not has_system -%}"
                + lit(self.system_prefix + self.default_system + self.turn_end + self.turn_suffix)
                + "{%- endif -%}"
            )
        content = (
            "{%- if message['content'] is string -%}{{ message['content'] }}"
            "{%- else -%}{%- for part in message['content'] -%}"
            "{%- if part['type'] == 'image' or 'image' in part -%}{{ " + image + " }}"
            "{%- elif 'text' in part -%}{{ part['text'] }}{%- endif -%}"
            "{%- endfor -%}{%- endif -%}"
        )
        parts += [
            "{%- for message in messages -%}",
            "{%- if message['role'] == 'assistant' -%}",
            lit(self.assistant_prefix) + "{%- generation -%}" + content + lit(self.turn_end) + "{%- endgeneration -%}",
            "{%- else -%}",
            "{%- if message['role'] == 'system' -%}" + lit(self.system_prefix),
            "{%- else -%}" + lit(self.user_prefix) + "{%- endif -%}",
            content + lit(self.turn_end),
            "{%- endif -%}",
            lit(self.turn_suffix),
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}" + lit(self.assistant_prefix) + "{%- endif -%}",
        ]
        return "".join(parts)


QWEN_CHATML = ChatFormat(
    system_prefix="<|im_start|>system\n",
    user_prefix="<|im_start|>user\n",
    assistant_prefix="<|im_start|>assistant\n",
    turn_end="<|im_end|>",
    turn_suffix="\n",
    default_system="You are a helpful assistant.",
    image_text="<|vision_start|><|image_pad|><|vision_end|>",
    synthesizer_end="<|endoftext|>",
    stop_strings=("<|im_end|>", "<|endoftext|>"),
)

LLAMA3_HEADERS = ChatFormat(
    bos="<|begin_of_text|>",
    system_prefix="<|start_header_id|>system<|end_header_id|>\n\n",
    user_prefix="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
    turn_end="<|eot_id|>",
    image_text="<|image|>",
    synthesizer_end="<|end_of_text|>",
    stop_strings=("<|eot_id|>", "<|end_of_text|>"),
)
