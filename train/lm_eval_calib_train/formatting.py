"""Messages -> token ids, the same way in every stage, so the reward model scores what PPO generates in the
format SFT taught.

Two prompt formats:

- ``chat``: the tokenizer's own chat template. An assistant turn is the text the template adds after the
  generation prompt (its content plus the template's end-of-turn marker, e.g. ``Hi<|im_end|>\\n``).
- ``plain``, for tokenizers without a template (documented in the README)::

      ### System:\\n{system}\\n\\n          (only when there is a system turn)
      ### Instruction:\\n{user}\\n\\n
      ### Response:\\n{assistant}<eos>

  with ``\\n\\n`` between an answer and the next instruction of a multi-turn dialogue.

Each piece (prompt text, assistant text) is tokenised on its own, as at generation time, when the prompt
is tokenised and the model continues it. SFT labels are ``-100`` on prompt pieces (loss on responses only).
"""

from __future__ import annotations

from typing import Any

from lm_eval_calib_train.config import TrainInputError
from lm_eval_calib_train.data import Conversation

IGNORE_INDEX = -100
PLAIN_HEADERS = {"system": "### System:\n", "user": "### Instruction:\n", "assistant": "### Response:\n"}


def resolve_prompt_format(tokenizer: Any, requested: str) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise TrainInputError(
            "--prompt-format chat: this tokenizer has no chat template; use --prompt-format plain (or auto)"
        )
    if requested == "auto":
        return "chat" if has_template else "plain"
    return requested


class Formatter:
    """Renders conversations for one tokenizer in one prompt format."""

    def __init__(self, tokenizer: Any, prompt_format: str):
        self.tokenizer = tokenizer
        self.mode = resolve_prompt_format(tokenizer, prompt_format)
        if tokenizer.eos_token_id is None:
            raise TrainInputError(
                "the tokenizer has no end-of-sequence token; set one in its tokenizer_config.json"
            )
        with_special = tokenizer("x").input_ids
        without = tokenizer("x", add_special_tokens=False).input_ids
        n = len(with_special) - len(without)
        # what the tokenizer puts in front of a text (usually BOS): the plain format starts with it
        self.text_prefix = list(with_special[:n]) if n > 0 and with_special[n:] == without else []
        self.turn_end_id = self._turn_end_id()

    # -- pieces ---------------------------------------------------------------------------------------
    def _render(self, messages: Conversation, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # noqa: BLE001 - templates raise anything (e.g. "roles must alternate")
            raise TrainInputError(
                f"the chat template cannot render this conversation ({type(exc).__name__}: {exc}); "
                "use --prompt-format plain"
            ) from None

    def pieces(self, messages: Conversation) -> list[tuple[str, bool]]:
        """The conversation as (text, is_assistant_turn) pieces whose concatenation is the whole text."""
        if self.mode == "plain":
            out: list[tuple[str, bool]] = []
            pending = ""
            for i, message in enumerate(messages):
                header = PLAIN_HEADERS[message["role"]]
                if message["role"] == "assistant":
                    out.append((pending + header, False))
                    out.append((message["content"], True))  # <eos> is added as a token id
                    pending = "\n\n" if i + 1 < len(messages) else ""
                else:
                    pending += header + message["content"] + "\n\n"
            if pending:
                out.append((pending, False))
            return out
        out = []
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render(messages[:k], generation_prompt=True)
            full = self._render(messages[: k + 1], generation_prompt=False)
            if not (prefix.startswith(done) and full.startswith(prefix)):
                raise TrainInputError(
                    "the chat template does not render a conversation as a prefix of its continuation, so "
                    "responses cannot be located; use --prompt-format plain"
                )
            out.append((prefix[len(done) :], False))
            out.append((full[len(prefix) :], True))
            done = full
        rest = self._render(messages, generation_prompt=False)[len(done) :] if done else ""
        if rest:
            out.append((rest, False))
        return [(text, flag) for text, flag in out if text]

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _turn_end_id(self) -> int:
        """The token that ends an assistant turn: the template's end-of-turn marker, else EOS."""
        if self.mode == "plain":
            return int(self.tokenizer.eos_token_id)
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        answer = next(text for text, is_answer in self.pieces(probe) if is_answer)
        content, ids = self._ids("Hello"), self._ids(answer)
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        special |= set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        if ids[: len(content)] == content and len(ids) > len(content) and ids[len(content)] in special:
            return int(ids[len(content)])
        return int(self.tokenizer.eos_token_id)

    # -- what the stages need -------------------------------------------------------------------------
    def sft_example(
        self, messages: Conversation, max_length: int, loss_on_prompt: bool = False
    ) -> tuple[list[int], list[int]] | None:
        """(input_ids, labels) cut to ``max_length``; ``None`` when no response token is left to learn."""
        input_ids: list[int] = []
        labels: list[int] = []
        if self.mode == "plain" and self.text_prefix:
            input_ids += self.text_prefix
            labels += [IGNORE_INDEX] * len(self.text_prefix)
        for text, is_answer in self.pieces(messages):
            ids = self._ids(text)
            if is_answer and self.mode == "plain":
                ids = ids + [self.turn_end_id]
            input_ids += ids
            labels += ids if (is_answer or loss_on_prompt) else [IGNORE_INDEX] * len(ids)
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels[1:]):  # the first label is never predicted
            return None
        return input_ids, labels

    def prompt_text(self, messages: Conversation) -> str:
        """A generation's prompt as text: the messages, then the assistant header (the tokenizer adds its
        prefix, e.g. BOS, when it tokenises the text with special tokens)."""
        if self.mode == "plain":
            text = "".join(PLAIN_HEADERS[m["role"]] + m["content"] + "\n\n" for m in messages)
            return text + PLAIN_HEADERS["assistant"]
        return self._render(messages, generation_prompt=True)

    def prompt_ids(self, messages: Conversation, max_length: int | None = None) -> list[int]:
        """A generation's prompt: the messages, then the assistant header; long prompts keep their end."""
        if self.mode == "plain":
            ids = self.text_prefix + self._ids(self.prompt_text(messages))
        else:
            ids = self._ids(self.prompt_text(messages))
        return ids[-max_length:] if max_length else ids

    def reward_ids(self, conversation: Conversation, max_length: int) -> list[int]:
        """Prompt + final assistant answer + end-of-turn token: what the reward model scores, matching what
        PPO hands it (the policy's answer up to and including its stop token). Long inputs keep their end."""
        answer = conversation[-1]["content"]
        ids = self.prompt_ids(conversation[:-1]) + self._ids(answer) + [self.turn_end_id]
        return ids[-max_length:]
