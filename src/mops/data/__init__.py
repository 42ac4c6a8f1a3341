"""Instruction data: readers, the paper's selection and split, templates, tokenization, batching."""

from mops.data.batching import collate, length_sorted_batches
from mops.data.example import Example
from mops.data.readers import LoadResult, read_path
from mops.data.sources import BUNDLED, DataSplits, load_splits, read_examples
from mops.data.tasks import DOLLY_TASKS, PAPER_TASKS, SNI_TASKS
from mops.data.template import TEMPLATES, render_prompt
from mops.data.tokenization import IGNORE_INDEX, Encoded, Tokenizer

__all__ = [
    "BUNDLED", "DOLLY_TASKS", "IGNORE_INDEX", "PAPER_TASKS", "SNI_TASKS", "TEMPLATES", "DataSplits", "Encoded",
    "Example", "LoadResult", "Tokenizer", "collate", "length_sorted_batches", "load_splits", "read_examples",
    "read_path", "render_prompt",
]
