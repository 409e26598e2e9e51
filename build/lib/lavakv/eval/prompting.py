"""Token ids of an evaluation prompt, split where the compressed context ends (for query-agnostic runs).

Unlike :func:`lavakv.generation.prompt_ids`, which joins context and question with a blank line and strips them
for chat templates, the user message here is exactly ``context + query``: benchmark prompts (LongBench's official
templates, RULER's) fix every separator themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptIds:
    """A prompt's token ids.

    Attributes:
        whole: the prompt tokenized in one piece (query-aware runs compress all of it).
        context: the ids up to the end of the context, tokenized alone (query-agnostic runs compress these).
        rest: the ids after the context, tokenized alone (fed through the compressed cache when query-agnostic).
    """

    whole: list[int]
    context: list[int]
    rest: list[int]


def encode_prompt(tokenizer, context: str, query: str = "", *, answer_prefix: str = "", chat: bool = True
                  ) -> PromptIds:
    """Tokenize ``context + query`` (one user turn of the chat template when ``chat`` and the tokenizer has one),
    followed by ``answer_prefix`` (after the assistant header with a chat template, else directly).

    Raises:
        ValueError: the chat template changed the message text, so the context's end cannot be found.
    """
    content = context + query
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        at = rendered.find(content)
        if at < 0:
            raise ValueError("the tokenizer's chat template rewrote the prompt text; run with --no-chat")
        rendered += answer_prefix.lstrip()
        split = at + len(context)
        special = False  # the template writes BOS and role markers itself
    else:
        rendered = content + answer_prefix
        split = len(context)
        special = True

    def encode(text: str, add_special: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_special)["input_ids"]) if text else []

    return PromptIds(encode(rendered, special), encode(rendered[:split], special), encode(rendered[split:], False))


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` without special tokens."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
