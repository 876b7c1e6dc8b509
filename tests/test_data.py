"""Tests for binarybert_jax.data: the GLUE reader on the real files and on broken ones, the
download helpers (offline), tokenization with the real MiniLM tokenizer and its cache, the
batching, and the tfds record mapping."""

import importlib.util
import logging
import pathlib
import shutil
import urllib.error
import zipfile

import numpy as np
import pytest

from binarybert_jax.data import batching, encode, glue, tfds_source

# The shared data sits beside the repository checkout, never inside it.
GLUE_ROOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"

# Rows per split of the shared files (../shared/data/README.md beside the checkout); test labels are hidden.
# MRPC's train.tsv holds 3,667 data rows (3,668 lines with the header), one fewer than the
# README's table and the 3,668 of the GLUE release: the file is what it is (its SHA-256 matches
# data/SHA256SUMS), so the count asserted is the file's.
REAL_COUNTS = {
    "cola": {"train": 8551, "dev": 1043, "test": 1063},
    "sst-2": {"train": 67349, "dev": 872, "test": 1821},
    "mrpc": {"train": 3667, "dev": 408, "test": 1725},
    "sts-b": {"train": 5749, "dev": 1500, "test": 1379},
}


@pytest.fixture(scope="module")
def glue_root() -> pathlib.Path:
    if not (GLUE_ROOT / "CoLA" / "train.tsv").is_file():
        pytest.skip(f"shared GLUE data not found at {GLUE_ROOT}")
    return GLUE_ROOT


@pytest.fixture(scope="module")
def tokenizer():
    from binarybert_jax.assets import minilm_dir
    from binarybert_jax.tokenizer import load_tokenizer

    try:
        return load_tokenizer(minilm_dir())
    except FileNotFoundError as e:
        pytest.skip(str(e))


class CountingTokenizer:
    """The real tokenizer, counting its batch calls (so a cache hit is visible without timing)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def write_tsv(path: pathlib.Path, lines: list[str], *, bom: bool = False) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "".join(line + "\n" for line in lines),
                    encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# Task specs.
# ------------------------------------------------------------------------------------------

def test_task_specs_cover_glue():
    assert glue.TASK_NAMES == ("cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte",
                               "wnli")
    directories = {spec.name: spec.directory for spec in glue.all_tasks()}
    assert directories == {"cola": "CoLA", "sst-2": "SST-2", "mrpc": "MRPC", "sts-b": "STS-B",
                           "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE",
                           "wnli": "WNLI"}
    for spec in glue.all_tasks():
        assert spec.main_metric in spec.metric_names
        assert spec.max_seq_length == (64 if spec.name in ("cola", "sst-2") else 128)
        if spec.is_regression:
            assert spec.labels is None and spec.num_labels == 1
        else:
            assert len(spec.labels) == spec.num_labels
        assert spec.test_layout.label is None and spec.layout.label is not None
        for layout in (spec.layout, spec.test_layout):
            assert len(layout.column_names) == layout.num_columns[0]
    assert glue.get_task("mnli").split_files["dev"] == "dev_matched"
    assert glue.get_task("mnli").split_files["test_mismatched"] == "test_mismatched"


@pytest.mark.parametrize("alias, name", [
    ("SST-2", "sst-2"), ("sst2", "sst-2"), ("Sst_2", "sst-2"), ("stsb", "sts-b"),
    ("STS-B", "sts-b"), ("CoLA", "cola"), ("MNLI", "mnli"), ("qqp", "qqp")])
def test_get_task_aliases(alias, name):
    assert glue.get_task(alias).name == name


def test_get_task_unknown_lists_names():
    with pytest.raises(ValueError, match="sst-2.*sts-b.*wnli"):
        glue.get_task("squad")


# ------------------------------------------------------------------------------------------
# Reading the real files.
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_real_row_counts(glue_root, task):
    for split, count in REAL_COUNTS[task].items():
        report = glue.read_split(glue_root, task, split)
        assert len(report.examples) == count, (task, split)
        assert report.num_skipped == 0
        assert report.header_found == glue.get_task(task).layout_for(split).has_header
        labels = [ex.label for ex in report.examples]
        if split == "test":
            assert all(label is None for label in labels)
        elif task == "sts-b":
            assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
        else:
            assert set(labels) == {0, 1}


def test_mrpc_bom_and_quotes(glue_root):
    train = glue.read_examples(glue_root, "mrpc", "train")
    first = train[0]
    assert first.label == 1 and first.guid == "mrpc-train-0"
    assert first.text_a.startswith('Amrozi accused his brother , whom he called " the witness "')
    assert first.text_b.startswith('Referring to him as only " the witness " , Amrozi')
    # A quote opening a field must not swallow the tab after it (csv's default dialect would).
    assert train[0].text_b.endswith("distorting his evidence .")
    assert not any("\ufeff" in ex.text_a or "\t" in ex.text_a or "\t" in ex.text_b
                   for ex in train)
    dev = glue.read_examples(glue_root, "MRPC", "dev")
    assert dev[0].text_b.startswith('" The foodservice pie business')
    test = glue.read_examples(glue_root, "mrpc", "test")
    assert test[0].guid == "mrpc-test-0" and test[0].text_b.startswith("Current Chief")


def test_cola_has_no_header(glue_root):
    report = glue.read_split(glue_root, "cola", "train")
    assert not report.header_found
    first = report.examples[0]
    assert first.text_a == "Our friends won't buy this analysis, let alone the next one we propose."
    assert first.label == 1 and first.text_b is None
    assert sum('"' in ex.text_a for ex in report.examples) == 2


def test_stsb_columns(glue_root):
    dev = glue.read_examples(glue_root, "stsb", "dev")
    assert dev[0] == glue.Example("sts-b-dev-0", "A man with a hard hat is dancing.",
                                  "A man wearing a hard hat is dancing.", 5.0)
    assert dev[1].label == pytest.approx(4.75)


def test_task_directory_accepted_as_data_dir(glue_root):
    assert len(glue.read_examples(glue_root / "SST-2", "sst-2", "dev")) == 872


def test_glue_dir_env(glue_root, monkeypatch):
    monkeypatch.delenv(glue.GLUE_DIR_ENV, raising=False)
    assert glue.glue_dir() is None
    with pytest.raises(FileNotFoundError, match="GLUE_DIR"):
        glue.read_examples(None, "cola", "dev")
    monkeypatch.setenv(glue.GLUE_DIR_ENV, str(glue_root))
    assert glue.glue_dir() == glue_root
    assert len(glue.read_examples(None, "cola", "dev")) == 1043


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        glue.read_examples(tmp_path, "rte", "train")
    assert str(tmp_path / "RTE" / "train.tsv") in str(info.value)
    assert "GLUE_DIR" in str(info.value)


def test_unknown_split():
    with pytest.raises(ValueError, match="dev_mismatched"):
        glue.split_path("/nonexistent", "mnli", "valid")


# ------------------------------------------------------------------------------------------
# Layouts of the tasks not in shared data, and broken files.
# ------------------------------------------------------------------------------------------

def _synthetic_rows(spec: glue.TaskSpec, layout: glue.TsvLayout, n_columns: int, n: int
                    ) -> tuple[list[str], list[tuple]]:
    """Rows in ``layout`` with known texts and labels, and the (text_a, text_b, label) expected."""
    rows, expected = [], []
    for k in range(n):
        fields = [f"x{k}"] * n_columns
        if layout.index is not None:
            fields[layout.index] = str(k)
        fields[layout.text_a] = f'first "sentence" {k}'
        text_b = None
        if layout.text_b is not None:
            text_b = fields[layout.text_b] = f"second sentence {k}"
        label = None
        if layout.label is not None:
            if spec.is_regression:
                fields[layout.label], label = f"{k + 0.5}", k + 0.5
            else:
                label = k % spec.num_labels
                fields[layout.label] = spec.labels[label]
        rows.append("\t".join(fields))
        expected.append((f'first "sentence" {k}', text_b, label))
    return rows, expected


@pytest.mark.parametrize("task", glue.TASK_NAMES)
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_every_task_layout(tmp_path, task, split):
    spec = glue.get_task(task)
    layout = spec.layout_for(split)
    rows, expected = _synthetic_rows(spec, layout, layout.num_columns[0], 5)
    header = ["\t".join(layout.column_names)] if layout.has_header else []
    write_tsv(tmp_path / spec.directory / (spec.split_files[split] + ".tsv"), header + rows)
    examples = glue.read_examples(tmp_path, task, split)
    assert [(ex.text_a, ex.text_b, ex.label) for ex in examples] == expected
    assert examples[3].guid == f"{spec.name}-{split}-3"


def test_mnli_dev_rows_are_longer(tmp_path):
    # MNLI dev rows carry five annotator labels before the gold label: 16 columns, not 12.
    spec = glue.get_task("mnli")
    header = "\t".join(spec.layout.column_names[:10] + tuple(f"label{i}" for i in range(1, 6))
                       + ("gold_label",))
    rows, expected = _synthetic_rows(spec, spec.layout, 16, 4)
    write_tsv(tmp_path / "MNLI" / "dev_mismatched.tsv", [header] + rows)
    examples = glue.read_examples(tmp_path, "mnli", "dev_mismatched")
    assert [(ex.text_a, ex.text_b, ex.label) for ex in examples] == expected
    assert [ex.label for ex in examples] == [0, 1, 2, 0]  # contradiction, entailment, neutral
    with pytest.raises(FileNotFoundError, match="dev_matched.tsv"):
        glue.read_examples(tmp_path, "mnli", "dev")


def test_header_missing_or_unexpected(tmp_path):
    # SST-2 without its header row: no data row is lost.
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["good movie\t1", "bad movie\t0"])
    report = glue.read_split(tmp_path, "sst-2", "dev")
    assert not report.header_found
    assert [ex.label for ex in report.examples] == [1, 0]
    # CoLA with a header it normally lacks, and Windows line ends.
    path = tmp_path / "CoLA" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes(b"source\tlabel\tmark\tsentence\r\nx\t0\t*\tBad sentence.\r\n\r\n")
    report = glue.read_split(tmp_path, "cola", "dev")
    assert report.header_found
    assert report.examples == [glue.Example("cola-dev-0", "Bad sentence.", None, 0)]


def test_malformed_rows_raise_with_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "SST-2" / "train.tsv", [
        "sentence\tlabel", "fine\t1", "a row with no label", "unknown label\t7", "also fine\t0",
    ])
    with pytest.raises(ValueError) as info:
        glue.read_examples(tmp_path, "sst-2", "train")
    assert f"{path}:3:" in str(info.value)
    assert "expected 2 tab-separated columns, found 1" in str(info.value)


def test_malformed_rows_skipped_and_counted(tmp_path, caplog):
    write_tsv(tmp_path / "SST-2" / "train.tsv", [
        "sentence\tlabel", "fine\t1", "a row with no label", "unknown label\t7", "also fine\t0",
    ])
    report = glue.read_split(tmp_path, "sst-2", "train", skip_malformed=True)
    assert [ex.text_a for ex in report.examples] == ["fine", "also fine"]
    assert [row.line for row in report.skipped] == [3, 4]
    assert "unknown label '7'" in report.skipped[1].reason
    assert report.num_skipped == 2
    with caplog.at_level(logging.WARNING, logger="binarybert_jax.data.glue"):
        examples = glue.read_examples(tmp_path, "sst-2", "train", skip_malformed=True)
    assert len(examples) == 2
    assert "skipped 2 malformed row(s)" in caplog.text


def test_bad_score_and_bad_utf8(tmp_path):
    header = "\t".join(glue.get_task("sts-b").layout.column_names)
    path = write_tsv(tmp_path / "STS-B" / "dev.tsv",
                     [header, "0\tg\tf\ty\t0\tn\tn\tA.\tB.\tfive"])
    with pytest.raises(ValueError, match=f"{path}:2: score 'five' is not a number"):
        glue.read_examples(tmp_path, "sts-b", "dev")
    path.write_bytes(header.encode() + b"\n0\tg\tf\ty\t0\tn\tn\t\xff\tB.\t1.0\n")
    with pytest.raises(ValueError, match=f"{path}:2: not valid UTF-8"):
        glue.read_examples(tmp_path, "sts-b", "dev")


# ------------------------------------------------------------------------------------------
# Download (no network: URL table, and the unpacking through a local fetch).
# ------------------------------------------------------------------------------------------

def test_download_urls_cover_every_task():
    for spec in glue.all_tasks():
        urls = glue.download_urls(spec.name)
        assert urls and all(u.startswith("https://dl.fbaipublicfiles.com/") for u in urls.values())
    assert set(glue.download_urls("mrpc")) == {"msr_paraphrase_train.txt",
                                               "msr_paraphrase_test.txt", "dev_ids.tsv"}
    assert glue.download_urls("sst2") == {
        "SST-2.zip": "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"}
    assert glue.download_urls("qqp")["QQP-clean.zip"].endswith("/glue/data/QQP-clean.zip")


def test_download_glue_unpacks_zip(glue_root, tmp_path):
    archive = tmp_path / "CoLA.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("train.tsv", "dev.tsv", "test.tsv"):
            zf.write(glue_root / "CoLA" / name, f"CoLA/{name}")
    fetched = []

    def fetch(url, path):
        fetched.append(url)
        shutil.copyfile(archive, path)

    task_dir = glue.download_glue("cola", tmp_path / "glue", fetch=fetch)
    assert fetched == ["https://dl.fbaipublicfiles.com/glue/data/CoLA.zip"]
    assert task_dir == tmp_path / "glue" / "CoLA"
    assert len(glue.read_examples(tmp_path / "glue", "cola", "dev")) == 1043
    assert sorted(p.name for p in (tmp_path / "glue").iterdir()) == ["CoLA"]


def test_download_glue_builds_mrpc(tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    files = {
        "msr_paraphrase_train.txt": header + "1\t11\t12\tA \" b .\tA b .\n0\t21\t22\tC .\tD .\n"
                                    "1\t31\t32\tE .\tF .\n",
        "msr_paraphrase_test.txt": header + "0\t41\t42\tG .\tH .\n",
        "dev_ids.tsv": "21\t22\n",
    }

    def fetch(url, path):
        path.write_text(files[url.rsplit("/", 1)[1].replace("mrpc_", "")], encoding="utf-8")

    glue.download_glue("mrpc", tmp_path, fetch=fetch)
    train = glue.read_split(tmp_path, "mrpc", "train")
    assert train.header_found
    assert [(ex.text_a, ex.label) for ex in train.examples] == [('A " b .', 1), ("E .", 1)]
    assert [ex.text_a for ex in glue.read_examples(tmp_path, "mrpc", "dev")] == ["C ."]
    test = glue.read_examples(tmp_path, "mrpc", "test")
    assert test == [glue.Example("mrpc-test-0", "G .", "H .", None)]


def test_download_failure_is_clear(tmp_path):
    def fetch(url, path):
        raise urllib.error.URLError("no network")

    with pytest.raises(OSError, match="GLUE_DIR"):
        glue.download_glue("rte", tmp_path, fetch=fetch)


# ------------------------------------------------------------------------------------------
# Tokenization (real MiniLM tokenizer, small slices).
# ------------------------------------------------------------------------------------------

def test_encode_single_sentence(glue_root, tokenizer):
    examples = glue.read_examples(glue_root, "sst-2", "dev")[:40]
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


def test_encode_pairs_segments_and_truncation(glue_root, tokenizer):
    examples = glue.read_examples(glue_root, "mrpc", "dev")[:40]
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


def test_encode_unlabeled_and_regression(glue_root, tokenizer):
    stsb_test = glue.read_examples(glue_root, "sts-b", "test")[:10]
    labels = encode.encode_examples(tokenizer, stsb_test, 32, is_regression=True)["labels"]
    assert labels.dtype == np.float32 and np.isnan(labels).all()
    stsb_dev = glue.read_examples(glue_root, "sts-b", "dev")[:10]
    labels = encode.encode_examples(tokenizer, stsb_dev, 32)["labels"]
    assert labels.dtype == np.float32 and labels[0] == 5.0
    cola_test = glue.read_examples(glue_root, "cola", "test")[:10]
    labels = encode.encode_examples(tokenizer, cola_test, 32)["labels"]
    assert labels.dtype == np.int32 and (labels == -1).all()


def test_encode_rejects_mixed_examples(tokenizer):
    mixed = [glue.Example("a", "one", None, 0), glue.Example("b", "one", "two", 1)]
    with pytest.raises(ValueError, match="mix"):
        encode.encode_examples(tokenizer, mixed, 16)


def test_encode_cache_hit_and_invalidation(glue_root, tokenizer, tmp_path):
    examples = glue.read_examples(glue_root, "mrpc", "train")[:40]
    counting = CountingTokenizer(tokenizer)
    first = encode.encode_cached(counting, examples, 64, tmp_path, ("mrpc", "train"))
    assert counting.calls == 1
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mrpc-train-L64-")
    second = encode.encode_cached(counting, examples, 64, tmp_path, ("mrpc", "train"))
    assert counting.calls == 1  # Served from the cache.
    for key in encode.ARRAY_KEYS:
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].dtype == second[key].dtype
    np.testing.assert_array_equal(first["input_ids"],
                                  encode.encode_examples(tokenizer, examples, 64)["input_ids"])
    # Another length, other examples or another key each tokenize again into their own file.
    encode.encode_cached(counting, examples, 32, tmp_path, ("mrpc", "train"))
    encode.encode_cached(counting, examples[:30], 64, tmp_path, ("mrpc", "train"))
    encode.encode_cached(counting, examples, 64, tmp_path, ("mrpc", "dev"))
    assert counting.calls == 4
    assert len(list(tmp_path.glob("*.npz"))) == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_cache_is_recomputed(glue_root, tokenizer, tmp_path, caplog):
    examples = glue.read_examples(glue_root, "cola", "dev")[:20]
    counting = CountingTokenizer(tokenizer)
    expected = encode.encode_cached(counting, examples, 32, tmp_path, ("cola", "dev"))
    path = encode.cache_path(tokenizer, examples, 32, tmp_path, ("cola", "dev"))
    path.write_bytes(path.read_bytes()[:100])  # A truncated write.
    with caplog.at_level(logging.WARNING, logger="binarybert_jax.data.encode"):
        again = encode.encode_cached(counting, examples, 32, tmp_path, ("cola", "dev"))
    assert counting.calls == 2 and "unreadable" in caplog.text
    np.testing.assert_array_equal(again["input_ids"], expected["input_ids"])
    encode.encode_cached(counting, examples, 32, tmp_path, ("cola", "dev"))
    assert counting.calls == 2  # The rewritten file is good.


def test_load_encoded_split(glue_root, tokenizer, tmp_path):
    arrays = encode.load_encoded_split(tokenizer, "stsb", "dev", data_dir=glue_root, limit=16,
                                       cache_dir=tmp_path)
    assert arrays["input_ids"].shape == (16, 128)  # The task's default length.
    assert arrays["labels"].dtype == np.float32
    assert len(list(tmp_path.glob("sts-b-dev-L128-*.npz"))) == 1


# ------------------------------------------------------------------------------------------
# Batching (synthetic encoded arrays: what matters is indices, masks and lengths).
# ------------------------------------------------------------------------------------------

def fake_encoded(n: int = 103, max_length: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays shaped like encode_examples' output; row i's tokens all equal i + 1000."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, max_length + 1, n).astype(np.int32)
    mask = (np.arange(max_length) < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": (np.arange(n, dtype=np.int32)[:, None] + 1000) * mask,
        "token_type_ids": np.zeros((n, max_length), np.int32),
        "attention_mask": mask,
        "labels": rng.integers(0, 2, n).astype(np.int32),
        "lengths": lengths,
    }


def collect(arrays, batch_size, **kwargs) -> list[dict[str, np.ndarray]]:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return list(batching.iterate_batches(arrays, batch_size, **kwargs))


def order(batches) -> np.ndarray:
    return np.concatenate([b["example_index"] for b in batches])


def test_shuffle_is_deterministic_per_seed_and_epoch():
    arrays = fake_encoded()
    a = order(collect(arrays, 16, shuffle=True, seed=3, epoch=0))
    assert np.array_equal(a, order(collect(arrays, 16, shuffle=True, seed=3, epoch=0)))
    assert not np.array_equal(a, order(collect(arrays, 16, shuffle=True, seed=3, epoch=1)))
    assert not np.array_equal(a, order(collect(arrays, 16, shuffle=True, seed=4, epoch=0)))
    # Training drops the remainder: 6 full batches, no example twice, none padded.
    assert len(a) == 96 and len(set(a.tolist())) == 96


def test_eval_counts_every_example_once():
    arrays = fake_encoded(n=103)
    batches = collect(arrays, 16, shuffle=False)
    assert len(batches) == batching.num_batches(103, 16, drop_remainder=False) == 7
    assert all(b["input_ids"].shape == (16, 64) for b in batches)
    mask = np.concatenate([b["example_mask"] for b in batches])
    index = order(batches)
    assert mask.dtype == np.float32 and mask.sum() == 103
    np.testing.assert_array_equal(index[mask == 1], np.arange(103))
    assert (index[mask == 0] == -1).all()
    # Padding rows are copies of a real row, so the model never sees an all-masked input.
    last = batches[-1]
    assert (last["attention_mask"][last["example_mask"] == 0].sum(1) > 0).all()
    labels = np.concatenate([b["labels"] for b in batches])[mask == 1]
    np.testing.assert_array_equal(labels, arrays["labels"])


def test_training_can_keep_a_padded_remainder():
    batches = collect(fake_encoded(n=103), 16, shuffle=True, drop_remainder=False)
    index = order(batches)
    assert sorted(index[index >= 0].tolist()) == list(range(103))
    assert batches[-1]["example_mask"].sum() == 103 - 96


@pytest.mark.parametrize("buckets", [None, (16, 32, 48)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_host_slices_concatenate_to_the_global_batch(buckets, shuffle):
    arrays = fake_encoded(n=150)
    kwargs = dict(shuffle=shuffle, seed=7, epoch=2, bucket_lengths=buckets,
                  group_by_length=buckets is not None)
    whole = collect(arrays, 16, **kwargs)
    for count in (2, 4):
        per_host = [collect(arrays, 16, process_index=p, process_count=count, **kwargs)
                    for p in range(count)]
        assert all(len(batches) == len(whole) for batches in per_host)
        for step, global_batch in enumerate(whole):
            for key, value in global_batch.items():
                parts = [per_host[p][step][key] for p in range(count)]
                assert all(part.shape[0] == 16 // count for part in parts)
                np.testing.assert_array_equal(np.concatenate(parts), value)


def test_bucketing_uses_allowed_lengths_and_keeps_every_token():
    arrays = fake_encoded(n=400, max_length=64)
    buckets = (16, 32, 48)  # 64, the arrays' width, is always added.
    for shuffle in (True, False):
        batches = collect(arrays, 8, shuffle=shuffle, bucket_lengths=buckets)
        widths = {b["input_ids"].shape[1] for b in batches}
        assert widths <= {16, 32, 48, 64}
        for b in batches:
            width = b["input_ids"].shape[1]
            assert all(b[k].shape == (8, width) for k in batching.SEQUENCE_KEYS)
            assert b["lengths"].max() <= width
            assert width == min(x for x in (16, 32, 48, 64) if x >= b["lengths"].max())
            np.testing.assert_array_equal(b["attention_mask"].sum(1), b["lengths"])
            np.testing.assert_array_equal(
                b["input_ids"], arrays["input_ids"][b["example_index"], :width])


def test_length_grouping_cuts_padding_and_stays_random():
    arrays = fake_encoded(n=800, max_length=128)
    buckets = batching.default_bucket_lengths(128)
    grouped = collect(arrays, 16, shuffle=True, bucket_lengths=buckets, group_by_length=True)
    ungrouped = collect(arrays, 16, shuffle=True, bucket_lengths=buckets, group_by_length=False)
    tokens = lambda batches: sum(b["input_ids"].size for b in batches)
    assert tokens(grouped) < 0.8 * tokens(ungrouped)
    assert sorted(order(grouped).tolist()) == list(range(800))
    again = collect(arrays, 16, shuffle=True, bucket_lengths=buckets, group_by_length=True,
                    epoch=1)
    assert not np.array_equal(order(grouped), order(again))
    # Batch order is shuffled, not sorted by length.
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths != sorted(widths)


def test_start_batch_resumes_mid_epoch():
    arrays = fake_encoded()
    full = collect(arrays, 8, shuffle=True, seed=1, epoch=3)
    resumed = collect(arrays, 8, shuffle=True, seed=1, epoch=3, start_batch=5)
    assert len(resumed) == len(full) - 5
    np.testing.assert_array_equal(order(resumed), order(full[5:]))


def test_batching_argument_errors():
    arrays = fake_encoded()
    with pytest.raises(ValueError, match="divisible"):
        batching.iterate_batches(arrays, 10, shuffle=False, process_index=0, process_count=4)
    no_lengths = {k: v for k, v in arrays.items() if k != "lengths"}
    with pytest.raises(ValueError, match="lengths"):
        batching.iterate_batches(no_lengths, 8, shuffle=False, bucket_lengths=(16,),
                                 process_index=0, process_count=1)
    with pytest.raises(ValueError, match="leading size"):
        batching.iterate_batches({**arrays, "labels": arrays["labels"][:5]}, 8, shuffle=False,
                                 process_index=0, process_count=1)


def test_default_buckets_and_process_defaults():
    assert batching.default_bucket_lengths(128) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert batching.default_bucket_lengths(64, step=32) == (32, 64)
    assert batching.default_bucket_lengths(40) == (16, 32, 40)
    # Without explicit process arguments, JAX's (single-process here) values are used.
    batches = list(batching.iterate_batches(fake_encoded(), 8, shuffle=False))
    assert batches[0]["input_ids"].shape == (8, 64)


def test_real_pipeline_end_to_end(glue_root, tokenizer):
    examples = glue.read_examples(glue_root, "mrpc", "dev")[:40]
    arrays = encode.encode_examples(tokenizer, examples, 128)
    batches = collect(arrays, 16, shuffle=False,
                      bucket_lengths=batching.default_bucket_lengths(128))
    assert sum(b["example_mask"].sum() for b in batches) == 40
    for b in batches:
        assert b["input_ids"].shape[1] < 128  # MRPC dev's first pairs fit in fewer tokens.
        np.testing.assert_array_equal(b["attention_mask"].sum(1), b["lengths"])


# ------------------------------------------------------------------------------------------
# TensorFlow Datasets source.
# ------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow_datasets is installed")
def test_tfds_missing_raises_clear_import_error():
    with pytest.raises(ImportError, match="pip install tensorflow tensorflow-datasets"):
        tfds_source.read_examples_tfds("sst-2", "dev")


def test_tfds_tables_cover_every_task():
    assert set(tfds_source.TFDS_CONFIGS) == set(glue.TASK_NAMES)
    assert set(tfds_source.TFDS_TEXT_FEATURES) == set(glue.TASK_NAMES)
    for task, names in tfds_source.TFDS_LABEL_NAMES.items():
        assert sorted(names) == sorted(glue.get_task(task).labels)
    assert tfds_source.tfds_split("mnli", "dev") == "validation_matched"
    assert tfds_source.tfds_split("mnli", "test_mismatched") == "test_mismatched"
    assert tfds_source.tfds_split("rte", "dev") == "validation"


@pytest.mark.parametrize("task", glue.TASK_NAMES)
def test_tfds_record_to_example(task):
    spec = glue.get_task(task)
    first, second = tfds_source.TFDS_TEXT_FEATURES[task]
    record = {first: b"first text", "idx": np.int32(7),
              "label": np.float32(2.5) if spec.is_regression else np.int64(1)}
    if second is not None:
        record[second] = "second text".encode()
    example = tfds_source.record_to_example(task, "train", record)
    assert example.guid == f"{spec.name}-train-7"
    assert example.text_a == "first text"
    assert example.text_b == ("second text" if spec.is_pair else None)
    assert spec.is_pair == (second is not None)
    if spec.is_regression:
        assert example.label == 2.5
    elif task == "mnli":
        assert spec.labels[example.label] == "neutral"  # tfds: entailment, neutral, contradiction.
    elif task in ("qnli", "rte"):
        assert spec.labels[example.label] == "not_entailment"
    else:
        assert example.label == 1
    record["label"] = np.float32(-1) if spec.is_regression else np.int64(-1)
    assert tfds_source.record_to_example(task, "test", record).label is None
