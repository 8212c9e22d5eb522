"""Impossible sizes for every family: one line with the bytes needed and
available, before the model is allocated."""
import json

import pytest

from conftest import invoke, one_line_error

TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 40


@pytest.mark.parametrize("case", ["gpt-block", "encoder-bigrams", "vit-width"])
def test_impossible_size_is_one_line(case, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"text": f"a fine film {i}", "label": i % 2}) + "\n" for i in range(32)))
    args = {"gpt-block": ["train", corpus, "--out", tmp_path / "r", "--block-size", "100000"],
            "encoder-bigrams": ["encoder", "train", "--train", reviews, "--out", tmp_path / "r",
                                "--bigram-buckets", "1000000000"],
            "vit-width": ["vit", "train", "--out", tmp_path / "r", "--n-embd", "20000", "--n-head", "4"]}[case]
    one_line_error(invoke(*args, "--no-progress"), "bytes", "available")
    assert not (tmp_path / "r" / "latest").exists()
