"""Calibration sequences for SparseGPT / Wanda: a seeded sample of the TRAINING split, never the test split."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from mops.data import Tokenizer, load_splits

if TYPE_CHECKING:  # datasets is imported where a calibration set is built (mops train runs without it)
    from datasets import Dataset


def calibration_dataset(
    tokenizer: PreTrainedTokenizerBase, data: str, samples: int, length: int, seed: int
) -> Dataset:
    """`samples` training examples (prompt + response, at most `length` tokens each), drawn with `seed`.

    The train/test split is the one `load_splits(data, seed=seed)` makes, so a run whose data seed equals
    the calibration seed never calibrates on its own test examples. Returns a `datasets.Dataset` with
    `input_ids` and `attention_mask` columns (variable lengths), which llm-compressor takes as is.
    """
    splits = load_splits(data, seed=seed)
    train = splits.train
    chosen = random.Random(seed).sample(range(len(train)), min(samples, len(train)))
    encoder = Tokenizer(tokenizer, splits.tasks, max_length=max(length, 16))
    rows = [encoder.encode(train[i]).input_ids[:length] for i in chosen]
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
