"""Bad Error-Localization input gets a clear error."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from peft_cca.localize.records import DatasetError, load_records, tokenizer_fingerprint


def _tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


MINE = _tokenizer(["two", "plus", "three", "is", "five", "six"])
OTHER = _tokenizer(["zwei", "und", "drei", "ist", "fuenf", "sechs", "sieben"])


def _write(tmp_path, records, meta=None):
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if meta is not None:
        (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def _record(ids=(1, 2, 3, 4), desired=5, undesired=6, **extra):
    return {
        "prefix_ids": list(ids),
        "desired_token_id": desired,
        "undesired_token_id": undesired,
        "split": "train",
        "problem_id": "p0",
        **extra,
    }


def test_loads_valid_records(tmp_path):
    data = _write(tmp_path, [_record(), _record(split="validation")], {"tokenizer": tokenizer_fingerprint(MINE)})
    records = load_records(data, vocab_size=7, tokenizer=MINE)
    assert [r.split for r in records] == ["train", "validation"]
    assert load_records(data, splits=("validation",))[0].desired == 5


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no Error-Localization dataset"):
        load_records(tmp_path)
    _write(tmp_path, [])
    with pytest.raises(DatasetError, match="empty"):
        load_records(tmp_path)


def test_token_ids_outside_vocabulary(tmp_path):
    _write(tmp_path, [_record(desired=50)])
    with pytest.raises(DatasetError, match="outside the model's vocabulary of 7"):
        load_records(tmp_path, vocab_size=7)


def test_malformed_records(tmp_path):
    _write(tmp_path, [{"prefix_ids": [1]}])
    with pytest.raises(DatasetError, match="lacks"):
        load_records(tmp_path)
    (tmp_path / "records.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"records\.jsonl: line 1: not valid JSON"):
        load_records(tmp_path)


def test_dataset_made_with_another_tokenizer(tmp_path):
    _write(tmp_path, [_record()], {"tokenizer": tokenizer_fingerprint(OTHER)})
    with pytest.raises(DatasetError, match="another tokenizer"):
        load_records(tmp_path, tokenizer=MINE)
    same_size = _tokenizer(["zwei", "und", "drei", "ist", "fuenf", "sechs"])
    _write(tmp_path, [_record()], {"tokenizer": tokenizer_fingerprint(same_size)})
    with pytest.raises(DatasetError, match="vocabulary differs"):
        load_records(tmp_path, tokenizer=MINE)
    # no meta.json: the ids must decode to the stored text
    (tmp_path / "meta.json").unlink()
    _write(tmp_path, [_record(prefix_text="zwei und drei ist")])
    with pytest.raises(DatasetError, match="decode"):
        load_records(tmp_path, tokenizer=MINE)
    _write(tmp_path, [_record(prefix_text="two plus three is")])
    assert load_records(tmp_path, tokenizer=MINE)


def test_records_whose_desired_token_is_the_undesired_one_are_skipped_with_a_count(tmp_path, caplog):
    _write(tmp_path, [_record(), _record(desired=6, undesired=6), _record(desired=2, undesired=2)])
    with caplog.at_level("WARNING"):
        records = load_records(tmp_path)
    assert [(r.desired, r.undesired) for r in records] == [(5, 6)]
    assert "skipped 2 of 3 records" in caplog.text
    _write(tmp_path, [_record(desired=6, undesired=6)])
    with pytest.raises(DatasetError, match="nothing to learn"):
        load_records(tmp_path)
