"""SQuAD data: the official layout, the by-article dev split, BERT's windows with offsets, and the
post-processing from span logits back to answer texts (hand-made contexts, the real tokenizer)."""

import json

import numpy as np
import pytest

from binarybert_jax.data import download, squad, tasks, tfds_source
from binarybert_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return load_tokenizer(minilm_dir)


def _words(n, start=0):
    return " ".join(f"w{i}" for i in range(start, start + n))


def _example(context, answer=None, qid="q", question="which word?", impossible=False):
    answers = () if answer is None else ((answer, context.index(answer)),)
    return squad.SquadExample(qid, question, context, answers, impossible, 0)


def _window_text(ex, features, f):
    s, e = features["labels"][f]
    off = features["offsets"][f]
    return ex.context[off[s, 0]:off[e, 1]] if s else None


def test_tasks_resolve_squad_beside_glue():
    assert tasks.get_task("SQuAD1").name == "squad1" and tasks.get_task("squad-v2.0").version == "2.0"
    assert tasks.get_task("squad2").head == "span" and tasks.get_task("mrpc").head == "classification"
    assert tasks.get_task("squad1").metric_names == ("exact_match", "f1")
    assert tasks.get_task("squad1").main_metric == "f1"
    with pytest.raises(ValueError, match="Unknown task 'squad'.*squad1, squad2"):
        tasks.get_task("squad")  # which version? refused, not guessed


def test_windows_offsets_and_labels_at_a_window_edge_and_in_two_windows(tokenizer):
    # Every "wN" word is 3 word pieces or fewer; the question takes 5 tokens, so a window of 32
    # holds 32 - 5 - 3 = 24 context tokens, and windows start every 8 tokens.
    context = _words(40)
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ex = _example(context, "w5 w6")
    f = squad.encode_squad(tokenizer, [ex], max_length=32, doc_stride=8, max_query_length=16)
    q_len = len(tokenizer("which word?", add_special_tokens=False)["input_ids"])
    room = 32 - q_len - 3
    n_windows = len(f["input_ids"])
    starts = [8 * w for w in range(n_windows)]
    assert starts[-1] + room >= len(ids) > starts[-2] + room  # the last window reaches the end
    assert f["input_ids"].shape == (n_windows, 32) and f["labels"].shape == (n_windows, 2)
    assert (f["feature_example"] == 0).all()
    for w in range(n_windows):
        row = f["input_ids"][w]
        assert row[0] == tokenizer.cls_token_id and row[q_len + 1] == tokenizer.sep_token_id
        n_ctx = min(room, len(ids) - starts[w])
        assert list(row[q_len + 2:q_len + 2 + n_ctx]) == ids[starts[w]:starts[w] + n_ctx]
        assert f["lengths"][w] == q_len + 3 + n_ctx == f["attention_mask"][w].sum()
        assert (f["token_type_ids"][w][q_len + 2:q_len + 3 + n_ctx] == 1).all()
        assert (f["token_type_ids"][w][:q_len + 2] == 0).all()
        # Offsets cover exactly the context tokens and give back their characters.
        ctx_off = f["offsets"][w][q_len + 2:q_len + 2 + n_ctx]
        assert (ctx_off >= 0).all() and (f["offsets"][w][:q_len + 2] == -1).all()
        assert "".join(context[a:b] for a, b in ctx_off).replace(" ", "") in context.replace(" ", "")
    # An answer is labelled in exactly the windows that hold all of its tokens, and maps back to
    # its text in each; "w5 w6" (tokens 10..13) lies in windows 0 and 1 (starts 0 and 8).
    def holding(answer_tokens):
        a, b = answer_tokens
        return [w for w in range(n_windows) if starts[w] <= a and b < starts[w] + room]

    assert holding((10, 13)) == [0, 1]
    assert [w for w in range(n_windows) if f["labels"][w][0]] == [0, 1]
    assert all(_window_text(ex, f, w) == "w5 w6" for w in (0, 1))

    # At a window's edge: an answer whose last token is window 0's last context token is
    # labelled there (end = the last context position); one that runs one word further is not.
    def token_span(answer):
        c0 = context.index(answer)
        inside = [i for i, (s0, e0) in enumerate(f["offsets"][0][q_len + 2:q_len + 2 + room])
                  if e0 > c0 and s0 < c0 + len(answer)]
        return inside[0], inside[0] + len(tokenizer(answer, add_special_tokens=False)["input_ids"]) - 1

    for answer, in_first in (("w11 w12", True), ("w12 w13", False)):
        span = token_span(answer)
        assert (span[1] == room - 1) if in_first else (span[0] < room <= span[1])
        edge = _example(context, answer)
        fe = squad.encode_squad(tokenizer, [edge], max_length=32, doc_stride=8, max_query_length=16)
        labelled = [w for w in range(len(fe["labels"])) if fe["labels"][w][0]]
        assert labelled == holding(span) and (0 in labelled) == in_first and len(labelled) >= 2
        assert all(_window_text(edge, fe, w) == answer for w in labelled)
        if in_first:
            assert fe["labels"][0].tolist() == [span[0] + q_len + 2, q_len + 2 + room - 1]


def test_unanswerable_and_a_cut_question(tokenizer):
    context = _words(10)
    long_question = "which " + _words(60, 100) + "?"
    ex = _example(context, None, question=long_question, impossible=True)
    f = squad.encode_squad(tokenizer, [ex], max_length=128, doc_stride=32, max_query_length=10)
    assert f["labels"].tolist() == [[0, 0]]
    assert f["input_ids"][0][11] == tokenizer.sep_token_id  # [CLS] + 10 question tokens + [SEP]
    with pytest.raises(ValueError, match="no room for the context"):
        squad.encode_squad(tokenizer, [ex], max_length=12, doc_stride=8, max_query_length=10)


def _features(n_windows, length, context_tokens, offsets, example=0, max_context=None):
    off = np.full((n_windows, length, 2), -1, np.int32)
    for w in range(n_windows):
        for t, (a, b) in offsets[w].items():
            off[w, t] = (a, b)
    mc = np.ones((n_windows, length), bool) if max_context is None else max_context
    return {"feature_example": np.full(n_windows, example, np.int32), "offsets": off, "max_context": mc}


def test_postprocess_on_fixed_logits():
    context = "alpha beta gamma delta"
    #          0     6    11    17
    spans = {2: (0, 5), 3: (6, 10), 4: (11, 16), 5: (17, 22)}  # tokens 2..5 are the context
    ex = squad.SquadExample("q1", "?", context, (("beta", 6),), False, 0)
    feats = _features(1, 8, 4, [spans])
    logits = np.zeros((1, 8, 2), np.float32)
    logits[0, 1, 0] = logits[0, 1, 1] = 50.0  # a question token: never an answer
    logits[0, 3, 0], logits[0, 4, 1] = 5.0, 5.0  # beta .. gamma
    logits[0, 5, 0] = 9.0  # a start after every good end: end < start is refused
    preds, nulls = squad.postprocess([ex], feats, logits, version="1.1")
    assert preds == {"q1": "beta gamma"} and nulls == {}
    # max_answer_length counts tokens.
    preds, _ = squad.postprocess([ex], feats, logits, version="1.1", max_answer_length=1)
    assert preds["q1"] in ("beta", "gamma", "delta")
    # A start where the window is not the token's max context is skipped.
    mc = np.ones((1, 8), bool)
    mc[0, 3] = False
    preds, _ = squad.postprocess([ex], _features(1, 8, 4, [spans], max_context=mc), logits, version="1.1")
    assert preds["q1"] != "beta gamma"


def test_postprocess_best_over_windows_and_the_null_answer():
    context = "one two three four five"
    #          0   4   8     14   19
    w0 = {2: (0, 3), 3: (4, 7), 4: (8, 13)}
    w1 = {2: (8, 13), 3: (14, 18), 4: (19, 23)}
    ex = squad.SquadExample("q", "?", context, (), True, 0)
    feats = _features(2, 6, 3, [w0, w1])
    logits = np.zeros((2, 6, 2), np.float32)
    logits[0, 3, 0], logits[0, 3, 1] = 2.0, 2.0   # "two": 4.0 in window 0
    logits[1, 3, 0], logits[1, 4, 1] = 3.0, 3.0   # "four five": 6.0 in window 1
    logits[0, 0] = (4.0, 4.0)                      # null 8.0 in window 0
    logits[1, 0] = (1.0, 2.0)                      # null 3.0 in window 1: the minimum
    preds, _ = squad.postprocess([ex], feats, logits, version="1.1")
    assert preds == {"q": "four five"}
    preds, nulls = squad.postprocess([ex], feats, logits, version="2.0")
    assert nulls == {"q": pytest.approx(3.0 - 6.0)} and preds == {"q": "four five"}
    preds, _ = squad.postprocess([ex], feats, logits, version="2.0", null_threshold=-3.5)
    assert preds == {"q": ""}  # null − best = −3 > −3.5


def test_split_by_article_keeps_articles_whole():
    data = [{"title": f"t{i}", "paragraphs": [{"context": f"c{i}", "qas": [
        {"id": f"{i}-{j}", "question": "?", "answers": [{"text": f"c{i}", "answer_start": 0}]}
        for j in range(i + 1)]}]} for i in range(5)]
    train, dev = squad.split_by_article(data, 0.5)
    assert [a["title"] for a in train] == ["t0", "t1"] and [a["title"] for a in dev] == ["t2", "t3", "t4"]
    tr, ev = squad.examples_from_dataset(train), squad.examples_from_dataset(dev)
    assert not {e.qid for e in tr} & {e.qid for e in ev}
    assert not {e.context for e in tr} & {e.context for e in ev}
    with pytest.raises(ValueError, match="leaves a part empty"):
        squad.split_by_article(data, 0.1)


def test_the_dev_split_protocol_on_the_real_dev_files(shared_dir):
    version, data = squad.read_dataset(shared_dir / "data" / "squad" / "dev-v1.1.json")
    train, dev = squad.split_by_article(data, 0.5)
    assert version == "1.1" and (len(train), len(dev)) == (24, 24)
    tr, ev = squad.examples_from_dataset(train), squad.examples_from_dataset(dev)
    assert (len(tr), len(ev)) == (5696, 4874)
    assert not {e.context for e in tr} & {e.context for e in ev}
    _, data2 = squad.read_dataset(shared_dir / "data" / "squad" / "dev-v2.0.json")
    train2, dev2 = squad.split_by_article(data2, 0.5)
    assert (len(train2), len(dev2)) == (17, 18)
    assert any(e.is_impossible for e in squad.examples_from_dataset(dev2))


def test_reader_errors_name_the_file(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"version": "1.1", "articles": []}))
    with pytest.raises(ValueError, match="x.json: not a SQuAD file"):
        squad.read_dataset(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="dev-v2.0.json not found"):
        squad.split_path(tmp_path, "2.0", "dev")
    bad = [{"paragraphs": [{"context": "short", "qas": [
        {"id": "z", "question": "?", "answers": [{"text": "longer text", "answer_start": 2}]}]}]}]
    with pytest.raises(ValueError, match="question z: answer 'longer text' at 2 lies outside"):
        squad.examples_from_dataset(bad)


def test_download_squad_writes_the_official_names(tmp_path):
    fetched = []

    def fetch(url, path):
        fetched.append(url)
        path.write_text("{}")

    files = download.download_squad("2.0", tmp_path, fetch=fetch)
    assert [f.name for f in files] == ["train-v2.0.json", "dev-v2.0.json"]
    assert fetched == ["https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v2.0.json",
                       "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json"]
    assert not list(tmp_path.glob("*.part"))


def test_tfds_records_become_the_official_layout():
    records = [
        {"id": b"a", "title": b"T", "context": b"x y", "question": b"q1",
         "answers": {"text": [b"y"], "answer_start": [2]}, "is_impossible": False},
        {"id": b"b", "title": b"T", "context": b"x y", "question": b"q2",
         "answers": {"text": [], "answer_start": []}, "is_impossible": True},
        {"id": b"c", "title": b"U", "context": b"z", "question": b"q3",
         "answers": {"text": [b"z"], "answer_start": [0]}, "is_impossible": False}]
    data = tfds_source.squad_records_to_data(records)
    assert [a["title"] for a in data] == ["T", "U"] and len(data[0]["paragraphs"]) == 1
    examples = squad.examples_from_dataset(data)
    assert [(e.qid, e.answers, e.is_impossible) for e in examples] == [
        ("a", (("y", 2),), False), ("b", (), True), ("c", (("z", 0),), False)]


def test_squad_configs_resolve_and_bad_settings_are_named():
    from binarybert_jax import pipeline, resolve
    from configs import finetune, ternary
    from configs import pipeline as pipeline_config
    for c in (finetune.get_config("task=squad2"), ternary.get_config("task=squad1")):
        resolve.validate(c)
        assert (c.data_source, c.max_seq_length, c.squad.doc_stride, c.squad.max_query_length) == ("json", 0, 128, 64)
    c = pipeline_config.get_config("task=squad1")
    pipeline.check_config(c)
    assert c.bucket_lengths == () and c.data_dir == ""  # static 384 windows; $SQUAD_DIR, never the GLUE slice
    c = finetune.get_config("task=squad1")
    c.squad.dev_split, c.max_seq_length = 1.5, 60
    with pytest.raises(ValueError, match=r"squad.dev_split=1.5 \(allowed: 0 .*max_seq_length=60 leaves no room"):
        resolve.validate(c)
