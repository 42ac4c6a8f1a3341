"""Readers for Dolly-style JSONL, Super-NaturalInstructions task JSON, our own JSONL, and HF datasets.

Every record is validated; a bad one raises `DataError` naming file, line (or instance) and field, or,
with ``skip_invalid=True``, is skipped and reported in `LoadResult.skipped`.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from mops.data.example import Example
from mops.errors import DataError

# Field names per record shape: (task, instruction, input, output); None = optional/absent.
DOLLY_FIELDS = ("category", "instruction", "context", "response")
MOPS_FIELDS = ("task", "instruction", "input", "output")


@dataclass
class LoadResult:
    """Examples read, plus one message per record skipped (only with ``skip_invalid``)."""

    examples: list[Example] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def extend(self, other: "LoadResult") -> None:
        self.examples.extend(other.examples)
        self.skipped.extend(other.skipped)


class _Collector:
    """Turns per-record errors into either an exception or a skip count."""

    def __init__(self, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.result = LoadResult()

    def fail(self, where: str, message: str) -> None:
        text = f"{where}: {message}"
        if not self.skip_invalid:
            raise DataError(text + " (use --skip-invalid to skip bad records)")
        self.result.skipped.append(text)

    def add_record(self, record: Any, where: str) -> None:
        """Validate one Dolly/mops record and keep it, or report what is wrong with it."""
        try:
            self.result.examples.append(record_to_example(record, where))
        except KeyError as err:
            self.fail(where, f"missing field '{err.args[0]}'")
        except ValueError as err:
            self.fail(where, str(err))


def _text(record: dict, name: str, required: bool, nonempty: bool) -> str:
    """A string field; raises KeyError/ValueError with the field name for the caller to report."""
    if name not in record or record[name] is None:
        if required:
            raise KeyError(name)
        return ""
    value = record[name]
    if not isinstance(value, str):
        raise ValueError(f"field '{name}' must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise ValueError(f"field '{name}' is empty")
    return value


def record_to_example(record: Any, source: str) -> Example:
    """Map a Dolly-shaped or mops-shaped dict to an `Example`; raises KeyError/ValueError."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fields = DOLLY_FIELDS if ("response" in record or "category" in record) else MOPS_FIELDS
    task_f, instr_f, input_f, output_f = fields
    return Example(
        task=_text(record, task_f, required=True, nonempty=True).strip(),
        instruction=_text(record, instr_f, required=True, nonempty=True),
        input=_text(record, input_f, required=False, nonempty=False),
        output=_text(record, output_f, required=True, nonempty=True),
        source=source,
    )


def _lines(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None if not UTF-8, what is wrong) for each line; gzip by suffix."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:  # type: ignore[operator]
            for lineno, raw in enumerate(handle, start=1):
                try:
                    yield lineno, raw.decode("utf-8"), ""
                except UnicodeDecodeError as err:
                    yield lineno, None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
    except (OSError, EOFError) as err:  # a damaged .gz file
        raise DataError(f"{path}: cannot read ({type(err).__name__}: {err})") from err


def read_jsonl(path: Path, skip_invalid: bool = False) -> LoadResult:
    """Dolly (instruction, context, response, category) or mops (task, instruction, input, output) JSONL."""
    out = _Collector(skip_invalid)
    for lineno, line, problem in _lines(path):
        where = f"{path}:{lineno}"
        if line is None:
            out.fail(where, problem)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            out.fail(where, f"not valid JSON ({err.msg} at column {err.colno})")
            continue
        out.add_record(record, where)
    return out.result


def read_prompts(path: Path) -> list[dict]:
    """Prompts to answer: one JSON object per line with ``instruction`` (required) and ``input`` (optional);
    other fields are kept. Errors name the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = []
    for lineno, line, problem in _lines(path):
        where = f"{path}:{lineno}"
        if line is None:
            raise DataError(f"{where}: {problem}")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            record["instruction"] = _text(record, "instruction", required=True, nonempty=True)
            record["input"] = _text(record, "input", required=False, nonempty=False)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        except KeyError as err:
            raise DataError(f"{where}: missing field {err}") from None
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
        records.append(record)
    if not records:
        raise DataError(f"{path}: no prompts")
    return records


def _load_json(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}:{line}:{column}: not valid UTF-8 (byte 0x{raw[err.start]:02x})") from None
    try:
        return json.loads(text)  # SNI files contain NaN: Python's json accepts it
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from err


def read_sni_task(path: Path, data: dict, skip_invalid: bool = False) -> LoadResult:
    """A Super-NaturalInstructions task file: Definition + Instances[{id, input, output[]}]."""
    out = _Collector(skip_invalid)
    for name in ("Definition", "Instances"):
        if name not in data:
            raise DataError(f"{path}: missing field '{name}' (not a Super-NaturalInstructions task file?)")
    definition = data["Definition"]
    instruction = " ".join(definition) if isinstance(definition, list) else str(definition)
    if not instruction.strip():
        raise DataError(f"{path}: field 'Definition' is empty")
    task = path.name.removesuffix(".json")
    for index, inst in enumerate(data["Instances"]):
        where = f"{path}#Instances[{index}]" + (f" (id {inst.get('id')})" if isinstance(inst, dict) else "")
        if not isinstance(inst, dict):
            out.fail(where, "expected a JSON object")
            continue
        outputs = inst.get("output")
        if isinstance(outputs, str):
            outputs = [outputs]
        if "input" not in inst:
            out.fail(where, "missing field 'input'")
        elif not outputs or not isinstance(outputs[0], str) or not outputs[0].strip():
            out.fail(where, "field 'output' is empty or missing")
        else:
            out.result.examples.append(
                Example(task, instruction, str(inst["input"]), outputs[0], f"{path.name}#{inst.get('id', index)}")
            )
    return out.result


def read_json(path: Path, skip_invalid: bool = False) -> LoadResult:
    """A .json file: an SNI task file, or a list of Dolly/mops records."""
    data = _load_json(path)
    if isinstance(data, dict):
        return read_sni_task(path, data, skip_invalid)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected an SNI task object or a list of records, got {type(data).__name__}")
    out = _Collector(skip_invalid)
    for index, record in enumerate(data):
        out.add_record(record, f"{path}[{index}]")
    return out.result


DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


def read_path(path: Path, skip_invalid: bool = False) -> LoadResult:
    """A data file, or a folder of them (read in sorted order)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(DATA_SUFFIXES))
        if not files:
            raise DataError(f"{path}: folder has no {', '.join(DATA_SUFFIXES)} files")
        result = LoadResult()
        for file in files:
            result.extend(read_path(file, skip_invalid))
        return result
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path, skip_invalid)
    if path.suffix == ".json":
        return read_json(path, skip_invalid)
    raise DataError(f"{path}: unsupported file type (use {', '.join(DATA_SUFFIXES)})")


def read_hf_dataset(dataset_id: str, split: str = "train", skip_invalid: bool = False) -> LoadResult:
    """A dataset on the Hugging Face Hub with Dolly or mops columns (needs network access to the Hub)."""
    import datasets

    try:
        rows: Iterable[dict] = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # datasets raises many types when offline or the id is wrong
        raise DataError(
            f"could not load dataset '{dataset_id}' from the Hugging Face Hub (no network or unknown id?): "
            f"{type(err).__name__}: {err}. Offline, pass a local .jsonl/.json file or folder, or 'dolly'/'sni'."
        ) from err
    out = _Collector(skip_invalid)
    for index, record in enumerate(rows):
        out.add_record(dict(record), f"{dataset_id}[{split}][{index}]")
    return out.result
