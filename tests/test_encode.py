"""Tests for binarybert_jax.data.encode: tokenization with the real MiniLM tokenizer (the SST-2
slice shipped in the repository, the MRPC and STS-B test slices; unlabeled splits from the full
GLUE files, skipped naming the file where ../shared lacks them) and the on-disk cache."""

import logging
import pathlib

import numpy as np
import pytest

from binarybert_jax.data import encode, glue, tasks

from conftest import CountingTokenizer

SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"
SHARED_GLUE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def shared_glue(*files: str) -> pathlib.Path:
    """The full GLUE root, or a skip naming the files (relative to it) that are missing."""
    missing = [str(SHARED_GLUE / f) for f in files if not (SHARED_GLUE / f).is_file()]
    if missing:
        pytest.skip(f"needs the full GLUE files, missing: {', '.join(missing)}")
    return SHARED_GLUE


def test_encode_single_sentence(tokenizer):
    examples = glue.read_examples(SLICE, tasks.get_task("sst-2"), "dev")[:40]
    arrays = encode.encode_examples(tokenizer, examples, 64)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert arrays[key].shape == (40, 64) and arrays[key].dtype == np.int32
    assert arrays["labels"].dtype == np.int32
    assert arrays["labels"].tolist() == [ex.label for ex in examples]
    assert np.all(arrays["input_ids"][:, 0] == tokenizer.cls_token_id)
    assert not arrays["token_type_ids"].any()
    np.testing.assert_array_equal(arrays["lengths"], arrays["attention_mask"].sum(1))
    # Right padding: the mask is a prefix of ones, ending with [SEP].
    for row, n in zip(arrays["attention_mask"], arrays["lengths"]):
        assert row[:n].all() and not row[n:].any()
    rows = np.arange(40)
    assert np.all(arrays["input_ids"][rows, arrays["lengths"] - 1] == tokenizer.sep_token_id)
    # Between [CLS] and [SEP]: the sentence's own word pieces.
    pieces = tokenizer(examples[0].text_a, add_special_tokens=False)["input_ids"]
    assert arrays["input_ids"][0, 1:arrays["lengths"][0] - 1].tolist() == pieces


def test_encode_pairs_segments_and_truncation(tokenizer, glue_dir):
    examples = glue.read_examples(glue_dir, tasks.get_task("mrpc"), "dev")[:40]
    for max_length in (128, 24):  # 24 truncates nearly every pair.
        arrays = encode.encode_examples(tokenizer, examples, max_length)
        assert arrays["input_ids"].shape == (40, max_length)
        for ids, segments, n in zip(arrays["input_ids"], arrays["token_type_ids"],
                                    arrays["lengths"]):
            seps = np.flatnonzero(ids[:n] == tokenizer.sep_token_id)
            assert len(seps) == 2 and seps[1] == n - 1  # Both sentences survive truncation.
            expected = np.zeros(max_length, np.int32)
            expected[seps[0] + 1:n] = 1
            np.testing.assert_array_equal(segments, expected)
    # longest_first trims the longer sentence first, so the two end up within a token.
    assert np.all(arrays["lengths"] == 24)
    for ids in arrays["input_ids"][:5]:
        seps = np.flatnonzero(ids == tokenizer.sep_token_id)
        len_a, len_b = seps[0] - 1, seps[1] - seps[0] - 1
        assert abs(len_a - len_b) <= 1


def test_encode_regression(tokenizer, glue_dir):
    stsb_dev = glue.read_examples(glue_dir, tasks.get_task("sts-b"), "dev")[:10]
    labels = encode.encode_examples(tokenizer, stsb_dev, 32)["labels"]
    assert labels.dtype == np.float32 and labels[0] == 5.0


def test_encode_unlabeled(tokenizer):
    glue_root = shared_glue("STS-B/test.tsv", "CoLA/test.tsv")
    stsb_test = glue.read_examples(glue_root, tasks.get_task("sts-b"), "test")[:10]
    labels = encode.encode_examples(tokenizer, stsb_test, 32, is_regression=True)["labels"]
    assert labels.dtype == np.float32 and np.isnan(labels).all()
    cola_test = glue.read_examples(glue_root, tasks.get_task("cola"), "test")[:10]
    labels = encode.encode_examples(tokenizer, cola_test, 32)["labels"]
    assert labels.dtype == np.int32 and (labels == -1).all()


def test_encode_rejects_mixed_examples(tokenizer):
    mixed = [glue.Example("a", "one", None, 0), glue.Example("b", "one", "two", 1)]
    with pytest.raises(ValueError, match="mix"):
        encode.encode_examples(tokenizer, mixed, 16)


def test_encode_cache_hit_and_invalidation(tokenizer, tmp_path):
    examples = glue.read_examples(SLICE, tasks.get_task("sst-2"), "train")[:40]
    counting = CountingTokenizer(tokenizer)
    first = encode.encode_cached(counting, examples, 64, tmp_path, ("sst-2", "train"))
    assert counting.calls == 1
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("sst-2-train-L64-")
    second = encode.encode_cached(counting, examples, 64, tmp_path, ("sst-2", "train"))
    assert counting.calls == 1  # Served from the cache.
    for key in encode.ARRAY_KEYS:
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].dtype == second[key].dtype
    np.testing.assert_array_equal(first["input_ids"],
                                  encode.encode_examples(tokenizer, examples, 64)["input_ids"])
    # Another length, other examples or another key each tokenize again into their own file.
    encode.encode_cached(counting, examples, 32, tmp_path, ("sst-2", "train"))
    encode.encode_cached(counting, examples[:30], 64, tmp_path, ("sst-2", "train"))
    encode.encode_cached(counting, examples, 64, tmp_path, ("sst-2", "dev"))
    assert counting.calls == 4
    assert len(list(tmp_path.glob("*.npz"))) == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_cache_is_recomputed(tokenizer, tmp_path, caplog):
    examples = glue.read_examples(SLICE, tasks.get_task("sst-2"), "dev")[:20]
    counting = CountingTokenizer(tokenizer)
    expected = encode.encode_cached(counting, examples, 32, tmp_path, ("sst-2", "dev"))
    path = encode.cache_path(tokenizer, examples, 32, tmp_path, ("sst-2", "dev"))
    path.write_bytes(path.read_bytes()[:100])  # A truncated write.
    with caplog.at_level(logging.WARNING, logger="binarybert_jax.data.encode"):
        again = encode.encode_cached(counting, examples, 32, tmp_path, ("sst-2", "dev"))
    assert counting.calls == 2 and "unreadable" in caplog.text
    np.testing.assert_array_equal(again["input_ids"], expected["input_ids"])
    encode.encode_cached(counting, examples, 32, tmp_path, ("sst-2", "dev"))
    assert counting.calls == 2  # The rewritten file is good.


def test_load_encoded_split(tokenizer, tmp_path, glue_dir):
    arrays = encode.load_encoded_split(tokenizer, tasks.get_task("stsb"), "dev", data_dir=glue_dir, limit=16,
                                       cache_dir=tmp_path)
    assert arrays["input_ids"].shape == (16, 128)  # The task's default length.
    assert arrays["labels"].dtype == np.float32
    assert len(list(tmp_path.glob("sts-b-dev-L128-*.npz"))) == 1
