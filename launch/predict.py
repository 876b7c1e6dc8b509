"""Predictions of a trained model in the GLUE submission format.

    python -m launch.predict --model runs/mrpc/tws.safetensors --task mrpc --input $GLUE_DIR/MRPC/test.tsv --out MRPC.tsv
    python -m launch.predict --model runs/mrpc/tws/final --task mrpc --input $GLUE_DIR/MRPC/dev.tsv --out mrpc_dev.tsv      # also prints the GLUE metrics
    printf 'A man sings.\\tA person sings.\\n' | python -m launch.predict --model m.safetensors --task mrpc --input - --out -

``--model``: a bit-packed file (``launch.export``) or a model checkpoint directory
(``checkpoints.save_model``); ``binarybert_jax.inference`` loads either. A packed file runs on
its integer codes (``--compute integer``, the default: weights resident as codes, products as
exact as the training forward's); ``--compute float`` unpacks it to float32 weights instead. ``--input``: a GLUE TSV at any
path, read by ``glue.read_tsv`` with the task's layout for ``--split`` (by default the split its
file name says: ``dev.tsv``, ``test_matched.tsv``...; pass ``--split`` for any other name), or
``-`` for standard input, one example a line, a tab between the two sentences of a pair task.
Blank lines are skipped, as in a TSV.

Output: a header ``index<TAB>prediction``, then one row per example, ``index`` its position
(0..N-1, the row order GLUE's server expects), ``prediction`` the label string of the task's
label list (``0``/``1``, ``entailment``...) or, for STS-B, the score clipped to [0, 5]. When every
input row has a label (a dev file), the GLUE metrics are printed (to stderr when ``--out -``).

SQuAD (``--task squad1|squad2``): ``--input`` is a SQuAD JSON file (the official layout, any path)
and ``--out`` the ``predictions.json`` to write (question id -> answer, what the official
evaluation reads); for v2.0 the no-answer scores (null − best non-null, ``squad.postprocess``) go
to ``--na_prob_out`` (default: ``na_probs.json`` beside ``--out``). Windows, n-best, answer length
and the v2.0 null threshold as in training (``--max_length`` 384, ``--doc_stride`` 128,
``--max_query_length`` 64, ``--n_best`` 20, ``--max_answer_length`` 30, ``--null_threshold`` 0).
When the file has gold answers the official EM/F1 are printed::

    python -m launch.predict --model runs/squad1/finetune/best --task squad1 --input $SQUAD_DIR/dev-v1.1.json --out predictions.json

Tokenizer: ``--tokenizer DIR``, else the one the saved model names, else MiniLM's
(``assets.minilm_dir()``). Flags are parsed with argparse so ``main(argv)`` can be called
repeatedly in-process (tests); ``stdin``/``stdout`` can be passed in as well.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence, TextIO

import numpy as np

from binarybert_jax import assets, inference, metrics, resolve, squad_metrics, workdirs
from binarybert_jax.data import glue, squad, tasks
from binarybert_jax.errors import UserError
from binarybert_jax.tokenizer import load_tokenizer
from launch import arguments, common

STSB_RANGE = (0.0, 5.0)


def add_reading_arguments(group) -> None:
    """The flags that say how ``--input`` is read and predicted (layout, tokenizer, length, batch,
    a packed file's products): this main's, and ``launch.export``'s check, which reads alike."""
    group.add_argument("--split", default=None,
                       help="the TSV layout to read (test, dev, train, MNLI's dev_mismatched..."
                            "); default: the split the file name says")
    group.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the "
                       "model's if it names one, else MiniLM's)")
    group.add_argument("--max_length", type=int, default=None,
                       help="padded sequence length (default: the task's, 64, 128 or 384)")
    group.add_argument("--batch_size", type=int, default=32)
    group.add_argument("--compute", choices=inference.COMPUTES, default=inference.INTEGER,
                       help="a packed file's products: on integer codes (default) or on its "
                            "weights unpacked to float32")


def check_positive(parser: argparse.ArgumentParser, args, flags) -> None:
    """Refuses (exit 2) a flag of ``flags`` given as zero or less; unset (None) ones pass."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be positive, got {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.predict", epilog=arguments.examples_from(__doc__),
                                     description="GLUE predictions from a packed file or a "
                                                 "model checkpoint.")
    parser.add_argument("--model", required=True,
                        help="packed .safetensors file or model checkpoint directory")
    parser.add_argument("--task", required=True, help=f"task: {', '.join(tasks.TASK_NAMES)}")
    parser.add_argument("--input", required=True, help="GLUE TSV file, or - for stdin lines; "
                        "SQuAD: a SQuAD JSON file")
    parser.add_argument("--out", required=True, help="output TSV (- for stdout); SQuAD: predictions.json")
    add_reading_arguments(parser)
    squad_args = parser.add_argument_group("SQuAD")
    squad_args.add_argument("--na_prob_out", default=None,
                            help="v2.0: where the no-answer scores go (default: na_probs.json beside --out)")
    squad_args.add_argument("--doc_stride", type=int, default=128)
    squad_args.add_argument("--max_query_length", type=int, default=64)
    squad_args.add_argument("--n_best", type=int, default=20)
    squad_args.add_argument("--max_answer_length", type=int, default=30)
    squad_args.add_argument("--null_threshold", type=float, default=0.0)
    return parser


def _split_for(task: glue.TaskSpec, path: pathlib.Path, split: Optional[str]) -> str:
    if split is not None:
        return split
    by_stem = {stem: name for name, stem in task.split_files.items()}
    if path.stem in by_stem:
        return by_stem[path.stem]
    raise ValueError(f"cannot tell the layout of {path} from its name; pass --split "
                     f"({', '.join(task.splits)})")


class SplitUnknown(ValueError):
    """A TSV whose name says no split, read without ``--split``."""


def read_examples(input_path: str, task: glue.TaskSpec, split: Optional[str],
                  stdin: TextIO) -> list[glue.Example]:
    """The examples of ``--input``: a GLUE TSV read with the layout of ``split`` (default: the split
    its file name says), or ``-``: ``read_lines`` of ``stdin``.

    Raises:
      SplitUnknown: no ``split`` and a file name that names none.
      FileNotFoundError, ValueError: as ``glue.read_tsv`` and ``read_lines`` raise them.
    """
    if input_path == "-":
        return read_lines(stdin, task)
    path = pathlib.Path(input_path)
    try:
        split = _split_for(task, path, split)
    except ValueError as e:
        raise SplitUnknown(str(e)) from None
    return glue.read_tsv(path, task, split).examples


def read_lines(stream: TextIO, task: glue.TaskSpec) -> list[glue.Example]:
    """One example a non-blank line; a pair task's line holds its two sentences tab-separated.

    Raises:
      ValueError: a pair task's line without exactly one tab (names the line number).
    """
    examples = []
    for number, line in enumerate(stream, start=1):
        line = line.rstrip("\n").removesuffix("\r")
        if not line.strip():
            continue
        if task.is_pair:
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"<stdin>:{number}: {task.name} takes sentence pairs, one pair a "
                                 f"line with one tab between them; found {len(parts) - 1} tabs")
            a, b = parts
        else:
            a, b = line, None
        examples.append(glue.Example(f"{task.name}-stdin-{len(examples)}", a, b, None))
    return examples


def format_predictions(task: glue.TaskSpec, logits: np.ndarray) -> list[str]:
    """The submission file's lines: header, then ``index<TAB>prediction`` per example."""
    lines = ["index\tprediction"]
    if task.is_regression:
        scores = np.clip(logits[:, 0], *STSB_RANGE)
        lines += [f"{i}\t{s:.3f}" for i, s in enumerate(scores)]
    else:
        lines += [f"{i}\t{task.labels[c]}" for i, c in enumerate(logits.argmax(-1))]
    return lines


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[TextIO] = None,
         stdout: Optional[TextIO] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    try:
        task = tasks.get_task(args.task)
    except ValueError as e:
        parser.error(str(e))
    check_positive(parser, args, ("batch_size", "max_length", "doc_stride", "max_query_length", "n_best",
                                  "max_answer_length"))
    check_outputs(args)
    if task.head == "span":
        return predict_squad(args, task, stdout)

    # ---- examples ----
    try:
        examples = read_examples(args.input, task, args.split, stdin)
    except SplitUnknown as e:
        parser.error(str(e))

    # ---- model and tokenizer ----
    predictor, tokenizer, tokenizer_dir = load_model(args.model, task, args.compute, args.tokenizer)
    max_length = args.max_length or task.max_seq_length

    # ---- predictions ----
    logits = inference.predict_examples(predictor, tokenizer, examples, max_length,
                                        args.batch_size)
    text = "\n".join(format_predictions(task, logits)) + "\n"
    report = stdout
    if args.out == "-":
        stdout.write(text)
        report = sys.stderr
    else:
        out = pathlib.Path(args.out)
        workdirs.write_text(out, text)
        print(f"wrote {len(examples)} predictions to {out} ({predictor.kind} model "
              f"{predictor.path}, tokenizer {tokenizer_dir})", file=report)

    # ---- metrics, when the input is labelled ----
    scores = labelled_metrics(task, examples, logits)
    if scores is not None:
        print(f"{task.name} ({len(examples)} examples): {format_metrics(scores)}", file=report)
    return 0


def labelled_metrics(task: glue.TaskSpec, examples: Sequence[glue.Example],
                     logits: np.ndarray) -> Optional[dict[str, float]]:
    """The GLUE metrics of ``logits`` when every example has a label, else None."""
    if not examples or any(ex.label is None for ex in examples):
        return None
    labels = np.array([ex.label for ex in examples], np.float32 if task.is_regression else np.int64)
    return metrics.glue_metrics(task, logits, labels)


def format_metrics(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())


def check_outputs(args) -> None:
    """Refuses, before anything is read or written, an output that is, contains or lies inside an
    input (``--out`` naming the ``--input`` file or inside the ``--model`` checkpoint), and two
    outputs on one file."""
    inputs = {"--input": args.input, "--model": args.model, "--tokenizer": args.tokenizer}
    if args.out != "-":
        workdirs.check_output("--out", args.out, inputs)
    if args.na_prob_out is not None:
        workdirs.check_output("--na_prob_out", args.na_prob_out,
                                 dict(inputs, **{"--out": None if args.out == "-" else args.out}))


def load_model(model: str, task, compute: str = inference.INTEGER, tokenizer: Optional[str] = None):
    """The predictor of ``model`` (a packed file or checkpoint, checked against ``task``), its
    tokenizer (``tokenizer``, else the model's, else MiniLM's) and that tokenizer's directory."""
    predictor = inference.load_predictor(model, compute=compute)
    trained_on = resolve.recorded_task(predictor.info)
    if trained_on and tasks.get_task(trained_on).name != task.name:
        raise UserError(f"{model} is a {trained_on} model, not a {task.name} one: pass "
                        f"--task {trained_on}, or a {task.name} model")
    if predictor.spec.head != task.head:
        raise UserError(f"{model}: the model has a {predictor.spec.head} head, {task.name} needs "
                        f"a {task.head} head; is it a {task.name} model?")
    if predictor.num_labels != task.num_labels:
        raise UserError(f"{model}: the model has {predictor.num_labels} outputs, "
                        f"{task.name} needs {task.num_labels}; is it a {task.name} model?")
    tokenizer_dir = tokenizer or predictor.tokenizer_dir or assets.minilm_dir()
    return predictor, load_tokenizer(tokenizer_dir), tokenizer_dir


def predict_squad(args, task: squad.SquadTask, stdout: TextIO) -> int:
    """``--task squad1|squad2``: predictions.json (and na_probs.json for v2.0) of a SQuAD file."""
    if args.input == "-":
        raise UserError("SQuAD reads a JSON file (--input PATH), not standard input")
    try:
        _, data = squad.read_dataset(args.input)
        examples = squad.examples_from_dataset(data, where=args.input)
    except OSError as e:
        raise UserError(f"--input {args.input}: {e}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    predictor, tokenizer, tokenizer_dir = load_model(args.model, task, args.compute, args.tokenizer)
    answers, null_diffs = inference.predict_squad(
        predictor, tokenizer, examples, version=task.version,
        max_length=args.max_length or task.max_seq_length, doc_stride=args.doc_stride,
        max_query_length=args.max_query_length, batch_size=args.batch_size, n_best=args.n_best,
        max_answer_length=args.max_answer_length, null_threshold=args.null_threshold)
    out = pathlib.Path(args.out)
    workdirs.write_json(out, answers)
    written = [str(out)]
    if task.has_unanswerable:
        na_out = pathlib.Path(args.na_prob_out) if args.na_prob_out else out.parent / "na_probs.json"
        workdirs.write_json(na_out, null_diffs)
        written.append(str(na_out))
    print(f"wrote {len(answers)} answers to {' and '.join(written)} ({predictor.kind} model "
          f"{predictor.path}, tokenizer {tokenizer_dir})", file=stdout)
    if any(ex.answers for ex in examples):
        scores = squad_metrics.evaluate(task.version, data, answers,
                                        null_diffs if task.has_unanswerable else None)
        print(f"{task.name} ({len(examples)} questions): "
              + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()),
              file=stdout)
    return 0


if __name__ == "__main__":
    common.run_main(main)
