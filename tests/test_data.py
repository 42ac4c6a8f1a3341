"""Data: readers, errors naming file/line/field, selection, split, template, tokenization, batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mops.data import DOLLY_TASKS, SNI_TASKS, Example, Tokenizer, collate, load_splits, read_path
from mops.data.readers import read_jsonl
from mops.data.selection import balanced_quotas, deduplicate, select_balanced, train_test_split
from mops.data.tokenization import IGNORE_INDEX
from mops.errors import ConfigError, DataError


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


DOLLY_ROW = {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"}


def test_dolly_jsonl_maps_fields(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [DOLLY_ROW, {**DOLLY_ROW, "context": "ctx", "category": "closed_qa"}])
    examples = read_path(path).examples
    assert [e.task for e in examples] == ["open_qa", "closed_qa"]
    assert examples[1].input == "ctx" and examples[1].output == "Blue."
    assert examples[0].source == f"{path}:1"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        ({"instruction": "x", "category": "open_qa"}, "missing field 'response'"),
        ({**DOLLY_ROW, "response": "  "}, "field 'response' is empty"),
        ({**DOLLY_ROW, "category": 3}, "field 'category' must be a string"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, bad, message):
    path = write_lines(tmp_path / "bad.jsonl", [DOLLY_ROW, DOLLY_ROW, bad])
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert f"{path}:3: {message}" in str(err.value)


def test_skip_invalid_counts(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [DOLLY_ROW, "{oops", {**DOLLY_ROW, "response": ""}, DOLLY_ROW])
    result = read_jsonl(path, skip_invalid=True)
    assert len(result.examples) == 2
    assert len(result.skipped) == 2 and result.skipped[0].startswith(f"{path}:2")


def test_sni_task_file(tmp_path):
    task = {
        "Definition": ["Add one."], "Positive Examples": [],
        "Instances": [{"id": "a", "input": "1", "output": ["2"]}, {"id": "b", "input": "5", "output": ["6", "six"]}],
    }
    path = tmp_path / "task9_add_one.json"
    path.write_text(json.dumps(task))
    examples = read_path(path).examples
    assert examples[1] == Example("task9_add_one", "Add one.", "5", "6", "task9_add_one.json#b")


def test_sni_errors_name_instance(tmp_path):
    path = tmp_path / "task1_x.json"
    path.write_text(json.dumps({"Definition": ["d"], "Instances": [{"id": "q7", "input": "1", "output": []}]}))
    with pytest.raises(DataError, match=r"task1_x.json#Instances\[0\] \(id q7\): field 'output' is empty"):
        read_path(path)
    path.write_text(json.dumps({"Instances": []}))
    with pytest.raises(DataError, match="missing field 'Definition'"):
        read_path(path)
    path.write_text('{"Definition": ["d"],\n "Instances": [}')
    with pytest.raises(DataError, match=r"task1_x.json:2:\d+: not valid JSON"):
        read_path(path)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_splits(str(tmp_path / "nope.jsonl"))
    path = write_lines(tmp_path / "d.jsonl", [DOLLY_ROW] * 3)
    with pytest.raises(DataError, match=r"unknown task\(s\) \['poetry'\]"):
        load_splits(str(path), tasks="poetry")


def test_balanced_quotas_water_fill():
    assert balanced_quotas({"a": 100, "b": 1000, "c": 1000}, 1500) == {"a": 100, "b": 700, "c": 700}
    assert sum(balanced_quotas({"a": 5, "b": 5, "c": 5}, 10).values()) == 10
    assert balanced_quotas({"a": 2, "b": 3}, 100) == {"a": 2, "b": 3}


def _examples(n_per_task: dict[str, int]) -> list[Example]:
    return [Example(t, f"q{t}{i}", "", f"a{i}") for t, n in n_per_task.items() for i in range(n)]


def test_selection_dedups_balances_and_is_seeded():
    data = _examples({"a": 50, "b": 10, "c": 50})
    data += data[:5]  # exact duplicates
    sel = select_balanced(data, ["a", "b", "c"], 60, seed=1)
    counts = {t: sum(e.task == t for e in sel) for t in "abc"}
    assert counts == {"a": 25, "b": 10, "c": 25}
    assert len(set(e.key for e in sel)) == len(sel)
    assert sel == select_balanced(data, ["a", "b", "c"], 60, seed=1)
    assert sel != select_balanced(data, ["a", "b", "c"], 60, seed=2)
    assert len(deduplicate(data)) == 110


def test_split_is_stratified_deterministic_and_disjoint():
    data = _examples({"a": 40, "b": 20})
    train, test = train_test_split(data, 0.1, seed=0)
    assert sorted(e.task for e in test) == ["a"] * 4 + ["b"] * 2
    assert not {e.key for e in train} & {e.key for e in test}
    assert (train, test) == train_test_split(data, 0.1, seed=0)
    assert test != train_test_split(data, 0.1, seed=1)[1]
    assert {e.key for e in test} == {e.key for e in train_test_split(list(reversed(data)), 0.1, seed=0)[1]}


def test_bundled_paper_subsets():
    dolly = load_splits("dolly")
    assert dolly.tasks == list(DOLLY_TASKS)
    assert len(dolly.train) + len(dolly.test) == 5000
    assert abs(len(dolly.test) - 500) <= 7
    assert all(700 <= c["train"] + c["test"] <= 720 for c in dolly.summary().values())
    sni = load_splits("sni")
    assert sni.tasks == list(SNI_TASKS) and len(sni.train) + len(sni.test) == 3773


def test_tokenization_labels_only_response_and_eos(tiny_tokenizer):
    tok = Tokenizer(tiny_tokenizer, ["t"], max_length=128)
    enc = tok.encode(Example("t", "Say hello.", "", "hello there"))
    n = enc.prompt_length
    assert enc.labels[:n] == [IGNORE_INDEX] * n
    assert enc.labels[n:] == enc.input_ids[n:]
    assert enc.input_ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(enc.input_ids[n:-1]) == "hello there"
    assert tiny_tokenizer.decode(enc.input_ids[:n]).endswith("### Response:\n")


def test_truncation_cuts_context_first_and_keeps_response(tiny_tokenizer):
    tok = Tokenizer(tiny_tokenizer, ["t"], max_length=64)
    long_context = " ".join(["the river runs past the old mill"] * 40)
    ex = Example("t", "Summarise.", long_context, "A river passes a mill.")
    enc = tok.encode(ex)
    assert len(enc.input_ids) <= 64
    text = tiny_tokenizer.decode(enc.input_ids)
    assert "### Instruction:\nSummarise." in text and text.endswith("A river passes a mill.<eos>")
    assert "### Input:" in text and text.count("the river") < 40


def test_overlong_response_is_cut_but_prompt_kept(tiny_tokenizer):
    tok = Tokenizer(tiny_tokenizer, ["t"], max_length=48)
    enc = tok.encode(Example("t", "Write.", "", "word " * 200))
    assert len(enc.input_ids) == 48
    assert "### Response:" in tiny_tokenizer.decode(enc.input_ids[: enc.prompt_length])


def test_chat_template_and_unknown_template(tiny_tokenizer):
    enc = Tokenizer(tiny_tokenizer, ["t"], 64, template="chat").encode_prompt(Example("t", "Hi", "there", "x"))
    assert tiny_tokenizer.decode(enc.input_ids) == "<|user|>Hi\n\nthere\n<|assistant|>"
    with pytest.raises(ConfigError, match="unknown template 'alpaca'"):
        Tokenizer(tiny_tokenizer, ["t"], 64, template="alpaca").encode(Example("t", "Hi", "", "x"))


def test_collate_pads_right_and_left(tiny_tokenizer):
    tok = Tokenizer(tiny_tokenizer, ["t"], 64)
    batch = tok.encode_all([Example("t", "a", "", "b"), Example("t", "a longer question here", "", "b")])
    right = collate(batch, pad_id=0)
    left = collate(batch, pad_id=0, left_pad=True)
    n0 = len(batch[0].input_ids)
    assert right["attention_mask"][0, :n0].all() and not right["attention_mask"][0, n0:].any()
    assert left["attention_mask"][0, -n0:].all() and not left["attention_mask"][0, :-n0].any()
    assert (right["labels"][0, n0:] == IGNORE_INDEX).all()


def test_json_list_of_records(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps([{"task": "t", "instruction": "i", "input": "", "output": "o"}, {"task": "t"}]))
    with pytest.raises(DataError, match=r"records.json\[1\]: missing field 'instruction'"):
        read_path(path)
    assert len(read_path(path, skip_invalid=True).examples) == 1


def test_hub_dataset_offline_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"could not load dataset 'someorg/no-such-data' from the Hugging Face Hub"):
        load_splits("someorg/no-such-data")
