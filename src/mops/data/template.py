"""How an example becomes text: the prompt (instruction + optional input) and the response.

``plain`` (default, documented in the README):

    ### Instruction:
    {instruction}

    ### Input:            <- only when the example has an input
    {input}

    ### Response:
    {response}<eos>

``chat``: the tokenizer's own chat template with one user turn (instruction, blank line, input) and the
generation prompt; the response follows, then EOS.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from mops.errors import ConfigError

TEMPLATES = ("plain", "chat")


def render_prompt(instruction: str, input_text: str, template: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The text the model sees before the response."""
    if template == "plain":
        body = f"### Instruction:\n{instruction.strip()}\n\n"
        if input_text.strip():
            body += f"### Input:\n{input_text.strip()}\n\n"
        return body + "### Response:\n"
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat': this tokenizer has no chat template; use --template plain")
        content = instruction.strip() + (f"\n\n{input_text.strip()}" if input_text.strip() else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise ConfigError(f"unknown template '{template}': use one of {', '.join(TEMPLATES)}")
