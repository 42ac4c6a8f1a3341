"""LLM.int8() (Dettmers et al. 2022) through bitsandbytes, as transformers integrates it.

The decoder's linear layers become `bnb.nn.Linear8bitLt` (int8 weights, fp16 outlier decomposition at
threshold 6.0); embeddings and the LM head stay in float. The int8 folder saves and reloads with
`from_pretrained` (its config carries the quantization settings). Gradients flow through the int8 layers to
their inputs, so prompts injected below or between them train.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from mops.models.loading import silence_bitsandbytes

def int8_config() -> BitsAndBytesConfig:
    """LLM.int8() with the paper's outlier threshold (6.0); the LM head is kept in float by transformers."""
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)


def quantize_int8_folder(source: Path, target: Path) -> None:
    """Load the float model folder `source` as LLM.int8() and save it (int8 weights) into `target`."""
    silence_bitsandbytes()
    model = AutoModelForCausalLM.from_pretrained(str(source), quantization_config=int8_config(), dtype=torch.float32)
    model.save_pretrained(str(target))
