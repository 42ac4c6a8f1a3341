"""Examples -> token ids with response-only labels, truncating the context first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from mops.data.example import Example
from mops.data.template import render_prompt
from mops.errors import ConfigError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized example. labels == IGNORE_INDEX on the prompt; the response ends with EOS."""

    input_ids: list[int]
    labels: list[int]
    task_id: int

    @property
    def prompt_length(self) -> int:
        return next((i for i, lab in enumerate(self.labels) if lab != IGNORE_INDEX), len(self.labels))


class Tokenizer:
    """Tokenizes examples for training/eval (prompt + response) and prompts alone (gate, generation).

    Truncation to `max_length` keeps the response: first the input (context) is shortened from its end,
    then the instruction; the response is cut only when even a minimal prompt (max_length // 4 tokens)
    would not fit beside it.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[str], max_length: int = 256, template: str = "plain"
    ) -> None:
        if max_length < 16:
            raise ConfigError(f"max_length must be >= 16, got {max_length}")
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no EOS token; set one before training")
        self.tok = tokenizer
        self.tasks = list(tasks)
        self.task_index = {t: i for i, t in enumerate(self.tasks)}
        self.max_length = max_length
        self.template = template

    def _ids(self, text: str, special: bool) -> list[int]:
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def _shorten(self, text: str, drop: int) -> str:
        ids = self._ids(text, special=False)
        return self.tok.decode(ids[: max(0, len(ids) - drop)], skip_special_tokens=True)

    def prompt_ids(self, ex: Example, budget: int | None = None) -> list[int]:
        """Prompt tokens, shortened (input first, then instruction) to at most `budget` tokens."""
        budget = self.max_length if budget is None else budget
        instruction, input_text = ex.instruction, ex.input
        ids = self._ids(render_prompt(instruction, input_text, self.template, self.tok), special=True)
        for _ in range(3):  # re-tokenizing a cut text can shift a boundary by a token or two
            excess = len(ids) - budget
            if excess <= 0:
                return ids
            if input_text:
                input_text = self._shorten(input_text, excess)
            else:
                instruction = self._shorten(instruction, excess)
            ids = self._ids(render_prompt(instruction, input_text, self.template, self.tok), special=True)
        return ids[-budget:] if len(ids) > budget else ids  # last resort: keep the end ("### Response:")

    def task_id(self, ex: Example) -> int:
        if ex.task not in self.task_index:
            raise ConfigError(f"{ex.source}: task '{ex.task}' is not one of {self.tasks}")
        return self.task_index[ex.task]

    def encode(self, ex: Example) -> Encoded:
        response = self._ids(ex.output, special=False) + [self.tok.eos_token_id]
        budget = max(self.max_length - len(response), self.max_length // 4)
        prompt = self.prompt_ids(ex, budget)
        response = response[: self.max_length - len(prompt)]
        return Encoded(prompt + response, [IGNORE_INDEX] * len(prompt) + response, self.task_id(ex))

    def encode_prompt(self, ex: Example) -> Encoded:
        """Prompt only (no response, no labels): for gate pretraining and generation."""
        prompt = self.prompt_ids(ex)
        return Encoded(prompt, [IGNORE_INDEX] * len(prompt), self.task_id(ex))

    def encode_all(self, examples: Sequence[Example], prompt_only: bool = False) -> list[Encoded]:
        fn = self.encode_prompt if prompt_only else self.encode
        return [fn(ex) for ex in examples]
