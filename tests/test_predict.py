"""Inference: packed file and checkpoint predictors agree, launch.predict writes GLUE submission
files from TSVs and stdin, and bad inputs fail clearly."""

import io
import json
import pathlib
import re

import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from binarybert_jax import hf_import, export, inference, size, checkpoints
from binarybert_jax.data import glue, tasks
from binarybert_jax.model import BertConfig, ModelSpec, QuantConfig
from binarybert_jax.tokenizer import load_tokenizer
from launch import export as export_main
from launch import predict as predict_main

from conftest import write_mrpc_test_file

# MiniLM's vocabulary, so that its tokenizer fits; small everywhere else.
TINY = BertConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
                  intermediate_size=64, max_position=128, hidden_dropout=0.0,
                  attention_dropout=0.0)
SPECS = {
    "bwn-1-1-8": ModelSpec(TINY, QuantConfig(1, 1, 8, "bwn", "bwn")),
    "split-1-1-8": ModelSpec(TINY, QuantConfig(weight_bits=1, embed_bits=1, weight_method="bwn",
                                               embed_method="bwn", split=True, act_bits=8)),
}
ROWS = 20
# Short sequences and a batch size that leaves a partial last batch (20 = 8 + 8 + 4).
FAST = ["--max-length", "32", "--batch-size", "8"]
# The metrics line launch.predict prints for labelled input, e.g. "mrpc (20 examples): f1 0.8000, ...".
METRIC_F1 = re.compile(r"\bf1 \d")
# The SST-2 slice shipped in the repository.
SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


def random_params(spec, seed):
    """Random latent weights for every parameter of ``spec``, from shapes alone: initialising a
    quantized model through ``init`` compiles its forward pass, seconds per spec."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in size.param_shapes(spec).items():
        if path.endswith("_clip"):
            flat[path] = np.broadcast_to(np.array([-2.5, 2.5], np.float32), shape).copy()
        else:
            flat[path] = rng.normal(0.0, 0.05, shape).astype(np.float32)
    return hf_import.unflatten(flat)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, minilm_dir):
    """A tiny backbone in the Hugging Face layout with MiniLM's tokenizer: the ``pretrained``
    directory a trained model's info points to."""
    params = random_params(ModelSpec(TINY, head="none"), seed=0)
    return hf_import.write_hf_checkpoint(tmp_path_factory.mktemp("tiny_hf"), params, TINY,
                                           minilm_dir)


@pytest.fixture(scope="module", params=sorted(SPECS))
def saved(request, tmp_path_factory, tiny_hf):
    """(packed file, checkpoint directory) of one randomly initialised quantized model."""
    spec = SPECS[request.param]
    params = random_params(spec, seed=1)
    root = tmp_path_factory.mktemp(request.param)
    info = {"pretrained": str(tiny_hf)}
    ckpt = checkpoints.save_model(root / "ckpt", params, spec, info)
    packed = export.export_packed(params, spec, root / "model.safetensors", info=info).path
    return packed, ckpt


@pytest.fixture(scope="module")
def slices(tmp_path_factory, glue_dir):
    """The first ROWS rows of MRPC dev, under a name that says no split, and the same pairs in the
    test layout, named test.tsv."""
    root = tmp_path_factory.mktemp("mrpc")
    lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (root / "mrpc_dev_head.tsv").write_text("\n".join(lines[:ROWS + 1]) + "\n", encoding="utf-8")
    return {"dev": root / "mrpc_dev_head.tsv",
            "test": write_mrpc_test_file(glue_dir, root / "test.tsv", ROWS)}


def read_submission(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_packed_and_checkpoint_predict_the_same(saved, slices, tiny_hf, tmp_path, capsys):
    packed, ckpt = saved
    from_packed = inference.load_predictor(packed)
    from_ckpt = inference.load_predictor(ckpt)
    assert (from_packed.kind, from_ckpt.kind) == ("packed", "checkpoint")
    assert from_packed.tokenizer_dir == from_ckpt.tokenizer_dir == tiny_hf
    # The packed model runs its stored codes; the checkpoint re-quantizes its weights each time.
    assert from_packed.compute == "integer" and from_packed.weight_codes is not None
    assert from_packed.spec == from_ckpt.spec

    examples = glue.read_tsv(slices["dev"], tasks.get_task("mrpc"), "dev").examples
    assert len(examples) == ROWS and all(ex.label is not None for ex in examples)
    tokenizer = load_tokenizer(tiny_hf)
    a = inference.predict_examples(from_packed, tokenizer, examples, 32, 8)
    b = inference.predict_examples(from_ckpt, tokenizer, examples, 32, 8)
    assert a.shape == (ROWS, 2)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

    outputs = {}
    for name, model in (("packed", packed), ("ckpt", ckpt)):
        out = tmp_path / f"{name}_dev.tsv"
        assert predict_main.main(["--model", str(model), "--task", "mrpc", "--input",
                                  str(slices["dev"]), "--split", "dev", "--out", str(out)]
                                 + FAST) == 0
        # Labelled input: metrics printed (matched as "f1 <value>": tmp paths may contain "f1").
        assert METRIC_F1.search(capsys.readouterr().out)
        header, rows = read_submission(out)
        assert header == "index\tprediction"
        assert [r[0] for r in rows] == [str(i) for i in range(ROWS)]
        assert [r[1] for r in rows] == [str(int(c)) for c in a.argmax(-1)]
        outputs[name] = out.read_text()
    assert outputs["packed"] == outputs["ckpt"]

    # A test file: its layout from its name, no labels, no metrics.
    out = tmp_path / "MRPC.tsv"
    predict_main.main(["--model", str(packed), "--task", "MRPC", "--input", str(slices["test"]),
                       "--out", str(out)] + FAST)
    assert not METRIC_F1.search(capsys.readouterr().out)
    header, rows = read_submission(out)
    assert header == "index\tprediction" and len(rows) == ROWS
    assert {r[1] for r in rows} <= {"0", "1"}


def test_input_at_any_path(saved, tiny_hf, tmp_path, capsys):
    """The shipped SST-2 dev rows under a name and directory that say nothing about GLUE: read
    in place with the layout --split names (the reader is given the path itself)."""
    packed, _ = saved
    lines = (SLICE / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    source = tmp_path / "reviews to score" / "batch 1.txt"
    source.parent.mkdir()
    source.write_text("\n".join(lines[:ROWS + 1]) + "\n", encoding="utf-8")
    out = tmp_path / "SST-2.tsv"
    assert predict_main.main(["--model", str(packed), "--task", "sst-2", "--input", str(source),
                              "--split", "dev", "--out", str(out)] + FAST) == 0
    assert re.search(rf"sst-2 \({ROWS} examples\): accuracy \d", capsys.readouterr().out)
    examples = glue.read_tsv(source, tasks.get_task("sst-2"), "dev").examples
    logits = inference.predict_examples(inference.load_predictor(packed),
                                        load_tokenizer(tiny_hf), examples, 32, 8)
    header, rows = read_submission(out)
    assert header == "index\tprediction"
    assert rows == [[str(i), str(int(c))] for i, c in enumerate(logits.argmax(-1))]
    assert sorted(p.name for p in source.parent.iterdir()) == ["batch 1.txt"]


def test_stdin_lines(saved, tiny_hf):
    packed, _ = saved
    pairs = [("The cat sat on the mat .", "A cat was sitting on the mat ."),
             ("Stocks fell sharply .", "It rained in Paris ."),
             ("He left .", "He went away .")]
    stdin = io.StringIO("\n".join(f"{a}\t{b}" for a, b in pairs[:2]) + "\n\n"
                        + "\t".join(pairs[2]) + "\r\n")
    stdout = io.StringIO()
    assert predict_main.main(["--model", str(packed), "--task", "mrpc", "--input", "-",
                              "--out", "-"] + FAST, stdin=stdin, stdout=stdout) == 0
    lines = stdout.getvalue().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1 + len(pairs)

    predictor = inference.load_predictor(packed)
    logits = inference.predict_texts(predictor, load_tokenizer(tiny_hf), *zip(*pairs),
                                     max_length=32, batch_size=8)
    assert lines[1:] == [f"{i}\t{c}" for i, c in enumerate(logits.argmax(-1))]

    # Single-sentence tasks take the whole line; pair tasks refuse a line without its tab.
    sst = predict_main.read_lines(io.StringIO("a b\tc\n"), tasks.get_task("sst-2"))
    assert (sst[0].text_a, sst[0].text_b) == ("a b\tc", None)
    with pytest.raises(ValueError, match=r"<stdin>:2: mrpc takes sentence pairs"):
        predict_main.read_lines(io.StringIO("a\tb\nno pair here\n"), tasks.get_task("mrpc"))


def test_submission_format_for_label_names_and_scores():
    mnli = predict_main.format_predictions(tasks.get_task("mnli"),
                                           np.array([[0, 5, 1], [2, 0, 1], [0, 0, 9]], float))
    assert mnli == ["index\tprediction", "0\tentailment", "1\tcontradiction", "2\tneutral"]
    stsb = predict_main.format_predictions(tasks.get_task("sts-b"), np.array([[-1.0], [2.5], [7]]))
    assert stsb == ["index\tprediction", "0\t0.000", "1\t2.500", "2\t5.000"]


def test_errors_are_clear(saved, slices, tmp_path, capsys):
    packed, ckpt = saved
    run = ["--input", str(slices["test"]), "--out", str(tmp_path / "o.tsv")]

    with pytest.raises(FileNotFoundError, match="no such model"):
        inference.load_predictor(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="no such model"):
        predict_main.main(["--model", str(tmp_path / "missing"), "--task", "mrpc"] + run)
    predictor = inference.load_predictor(packed)
    with pytest.raises(ValueError, match="max_length 129 exceeds the model's 128 position"):
        inference.predict_texts(predictor, None, ["a"], max_length=129)
    with pytest.raises(ValueError, match="2 first sentences but 1 second"):
        inference.predict_texts(predictor, None, ["a", "b"], ["c"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without model.json"):
        inference.load_predictor(tmp_path / "empty")

    with pytest.raises(SystemExit):
        predict_main.main(["--model", str(packed), "--task", "mrcp"] + run)
    assert "Unknown task 'mrcp'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_main.main(["--model", str(packed), "--task", "mrpc", "--input",
                           str(slices["dev"]), "--out", str(tmp_path / "o.tsv")])
    assert "pass --split" in capsys.readouterr().err
    # A 2-label model for a 3-label task.
    with pytest.raises(ValueError, match="2 outputs, mnli needs 3"):
        predict_main.main(["--model", str(ckpt), "--task", "mnli", "--input", "-", "--out", "-"],
                          stdin=io.StringIO("a\tb\n"), stdout=io.StringIO())
    # A test file read with the dev layout: the error names the file, the line and the mismatch.
    with pytest.raises(ValueError, match=re.escape(f"{slices['test']}:1: this is the header of "
                                                   f"a mrpc test file")):
        predict_main.main(["--model", str(packed), "--task", "mrpc", "--input",
                           str(slices["test"]), "--split", "dev", "--out", str(tmp_path / "o.tsv")])

    # A packed file of another format version: export's own error.
    tensors = load_file(str(packed))
    with safe_open(str(packed), framework="numpy") as f:
        manifest = json.loads(f.metadata()[export.MANIFEST_KEY])
    manifest["version"] = export.FORMAT_VERSION + 1
    bad = tmp_path / "future.safetensors"
    save_file(tensors, str(bad), metadata={export.MANIFEST_KEY: json.dumps(manifest)})
    with pytest.raises(export.PackedFormatError, match="version"):
        inference.load_predictor(bad)


def test_bitwise_1_1_1_file_predicts_exactly_like_its_checkpoint(slices, tiny_hf, tmp_path, capsys):
    spec = ModelSpec(TINY, QuantConfig(1, 1, 1, "bibert", "bibert", "sign", weight_granularity="row",
                                       embed_granularity="row", attention="bool"))
    params = random_params(spec, seed=2)
    info = {"pretrained": str(tiny_hf)}
    ckpt = checkpoints.save_model(tmp_path / "ckpt", params, spec, info)
    packed = export.export_packed(params, spec, tmp_path / "bibert.safetensors", info=info).path
    bits, sim = inference.load_predictor(packed), inference.load_predictor(ckpt)
    assert (bits.kind, sim.kind) == ("bitwise", "checkpoint") and bits.tokenizer_dir == tiny_hf
    examples = glue.read_tsv(slices["dev"], tasks.get_task("mrpc"), "dev").examples
    tokenizer = load_tokenizer(tiny_hf)
    np.testing.assert_array_equal(inference.predict_examples(bits, tokenizer, examples, 32, 8),
                                  inference.predict_examples(sim, tokenizer, examples, 32, 8))
    outputs = []
    for model in (packed, ckpt):
        out = tmp_path / f"{model.name}.tsv"
        assert predict_main.main(["--model", str(model), "--task", "mrpc", "--input",
                                  str(slices["dev"]), "--split", "dev", "--out", str(out)] + FAST) == 0
        assert METRIC_F1.search(capsys.readouterr().out)
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]


def test_the_python_example_in_the_usage_docs_runs(tiny_hf, tmp_path, monkeypatch, capsys):
    """The ``Predictor`` example of docs/usage.md, run as written on a tiny packed MRPC model."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "Predictor.load" in b)
    spec = SPECS["bwn-1-1-8"]
    export.export_packed(random_params(spec, seed=1), spec, tmp_path / "mrpc_ternary.safetensors",
                         info={"pretrained": str(tiny_hf), "task": "mrpc"})
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "docs/usage.md", "exec"), namespace)
    result = namespace["result"]
    assert result.labels in (["0"], ["1"])  # MRPC's label strings
    assert result.scores.shape == (1, 2) and np.isclose(result.scores.sum(), 1.0)
    assert result.labels[0] == str(int(result.scores.argmax()))
    assert str(result.labels) in capsys.readouterr().out


def test_predictor_call_matches_predict_texts(saved, tiny_hf):
    packed, _ = saved
    model = inference.Predictor.load(packed)
    firsts, seconds = ["A man sings.", "It rains."], ["A person sings.", "The sun shines."]
    result = model(firsts, seconds, max_length=32)
    logits = inference.predict_texts(model, load_tokenizer(tiny_hf), firsts, seconds, 32)
    np.testing.assert_array_equal(result.logits, logits)
    assert result.labels == [int(i) for i in logits.argmax(-1)]  # no task recorded: class ids
    np.testing.assert_allclose(result.scores.sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(TypeError, match="lists of sentences"):
        model("A man sings.")


# --------------------------------------------------------------------------------------------
# launch.export --check_input: the written file against the checkpoint it came from.
# --------------------------------------------------------------------------------------------
MISMATCHES = re.compile(r"prediction mismatches: (\d+)")
LARGEST = re.compile(r"largest \|logit difference\|: (\S+)")


def test_export_checks_the_file_it_wrote_against_its_checkpoint(saved, glue_dir, tmp_path, capsys):
    _, ckpt = saved
    dev = glue_dir / "MRPC" / "dev.tsv"
    out = tmp_path / "checked.safetensors"
    assert export_main.main(["--ckpt", str(ckpt), "--out", str(out), "--check_input", str(dev),
                             "--task", "MRPC"] + FAST) == 0
    text = capsys.readouterr().out
    assert out.is_file() and f"check on {dev} (mrpc, 64 examples, batch 8, length 32)" in text
    assert "(packed, integer)" in text
    assert MISMATCHES.search(text).group(1) == "0"
    assert float(LARGEST.search(text).group(1)) <= 1e-5
    # Labelled: the metrics of both, the ones launch.predict prints for each model.
    shown = dict(re.findall(r"^  (checkpoint|packed) metrics: (.*)$", text, re.M))
    assert set(shown) == {"checkpoint", "packed"}
    for name, model in (("checkpoint", ckpt), ("packed", out)):
        predict_main.main(["--model", str(model), "--task", "mrpc", "--input", str(dev),
                           "--out", str(tmp_path / f"{name}.tsv")] + FAST)
        assert f"mrpc (64 examples): {shown[name]}" in capsys.readouterr().out

    # Unlabelled lines on stdin, the packed file on floats: no metrics.
    again = tmp_path / "floats.safetensors"
    assert export_main.main(["--ckpt", str(ckpt), "--out", str(again), "--check_input", "-",
                             "--task", "mrpc", "--compute", "float"] + FAST,
                            stdin=io.StringIO("A man sings.\tA person sings.\nA dog.\tA cat.\n")) == 0
    text = capsys.readouterr().out
    assert "2 examples" in text and "(packed, float)" in text and "metrics" not in text
    assert MISMATCHES.search(text).group(1) == "0"


def test_export_check_reports_a_file_that_predicts_otherwise(saved, glue_dir, tmp_path, capsys):
    """Another model's file (the classifier negated: every logit's sign flips) against the
    checkpoint: every prediction differs, counted, and the check's status is nonzero."""
    _, ckpt = saved
    params, spec, info = checkpoints.load_model(ckpt)
    params = jax.tree_util.tree_map(np.asarray, params)
    params["classifier"] = {k: -v for k, v in params["classifier"].items()}
    other = export.export_packed(params, spec, tmp_path / "other.safetensors", info=info).path
    task = tasks.get_task("sst-2")
    examples = glue.read_tsv(SLICE / "SST-2" / "dev.tsv", task, "dev").examples[:16]
    assert export_main.check_agreement(ckpt, other, task, examples, where="slice", tokenizer=None,
                                       compute="integer", max_length=32, batch_size=8) \
        == export_main.EXIT_DISAGREES
    captured = capsys.readouterr()
    assert MISMATCHES.search(captured.out).group(1) == "16"
    assert "accuracy" in captured.out
    assert f"16 of 16 predictions of {other} differ" in captured.err


@pytest.mark.parametrize("extra, message", [
    ([], "--check_input needs --task"),
    (["--task", "squad1"], "not a GLUE task"),
    (["--task", "mrpc", "--batch_size", "0"], "--batch_size must be positive"),
])
def test_export_check_refuses_bad_input_before_writing(saved, slices, tmp_path, capsys, extra, message):
    _, ckpt = saved
    out = tmp_path / "never.safetensors"
    with pytest.raises(SystemExit) as e:
        export_main.main(["--ckpt", str(ckpt), "--out", str(out), "--check_input",
                          str(slices["test"])] + extra)
    assert e.value.code == 2 and message in capsys.readouterr().err and not out.exists()
    # A file whose name says no split, without --split.
    with pytest.raises(SystemExit):
        export_main.main(["--ckpt", str(ckpt), "--out", str(out), "--check_input",
                          str(slices["dev"]), "--task", "mrpc"])
    assert "pass --split" in capsys.readouterr().err and not out.exists()
