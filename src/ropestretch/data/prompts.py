"""How a retrieval prompt is put to a model.

Three formats, built in token space so that a prompt's length stays exact:

- ``legacy``: context, then a question that the answer continues ("... The pass key is"), no
  instruction. The wording ropestretch's tiny base was pre-trained on (the demo uses it).
- ``base``: the standard forms, instruction first (passkey as in Landmark Attention, YaRN, PoSE and
  LongLoRA; needle as in RULER; LongChat-Lines and lost-in-the-middle KV retrieval as their papers
  ask them), then the question and the start of the answer.
- ``chat``: the same, with instruction, context and question as one user turn of the tokenizer's
  chat template, and the start of the answer after the assistant header (CREAM-Chat's needle test).

``auto`` is ``chat`` for a tokenizer with a chat template, else ``base``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ropestretch.errors import UsageError

FORMATS = ("auto", "legacy", "base", "chat")
_MARK = "\u2063ROPESTRETCH_CONTENT\u2063"


@dataclass(frozen=True)
class PromptFormat:
    """A format and, for ``chat``, the template's tokens around the user's content.

    Attributes:
        name: ``legacy``, ``base`` or ``chat``.
        user_prefix: template tokens before the user's content (system turn, user header).
        assistant_prefix: template tokens from the end of the user's content to the answer.
    """

    name: str
    user_prefix: tuple[int, ...] = ()
    assistant_prefix: tuple[int, ...] = ()

    @property
    def legacy(self) -> bool:
        return self.name == "legacy"

    def head(self, tokenizer, instruction: str) -> list[int]:
        """Tokens before the context: the template's user header and the instruction."""
        return list(self.user_prefix) + _ids(tokenizer, instruction)

    def tail(self, tokenizer, question: str, answer_prefix: str) -> list[int]:
        """Tokens after the context: the question, the turn change, and the start of the answer."""
        if self.name == "chat":
            return _ids(tokenizer, question) + list(self.assistant_prefix) + _ids(tokenizer, answer_prefix)
        return _ids(tokenizer, question + " " + answer_prefix)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def prompt_format(tokenizer, name: str = "auto") -> PromptFormat:
    """The format ``name`` (see the module docstring) for ``tokenizer``."""
    if name not in FORMATS:
        raise UsageError(f"--prompt must be one of {', '.join(FORMATS)}, got {name!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if name == "auto":
        name = "chat" if has_template else "base"
    if name != "chat":
        return PromptFormat(name)
    if not has_template:
        raise UsageError("--prompt chat: this tokenizer has no chat template; use --prompt base")
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception as err:
        raise UsageError(f"the tokenizer's chat template cannot render a user turn: {err}") from None
    if text.count(_MARK) != 1:
        raise UsageError("the tokenizer's chat template does not place the user's content once")
    before, after = text.split(_MARK)
    return PromptFormat("chat", tuple(_ids(tokenizer, before)), tuple(_ids(tokenizer, after)))
