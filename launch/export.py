"""Exports a trained quantized model checkpoint as one bit-packed ``.safetensors`` file.

    python -m launch.export --ckpt runs/mrpc/tws --out runs/mrpc/tws.safetensors
    python -m launch.export --ckpt runs/mrpc/tws --out runs/mrpc/tws.safetensors --check_input $GLUE_DIR/MRPC/dev.tsv --task mrpc

Binary weights take 1 bit on disk, ternary 2, k-bit k; everything else stays float32. Prints the
file size beside the size accounting (``binarybert_jax.size``) and the float32 checkpoint's size.
A LAT model is packed with the diagonal it was trained with (saved in its checkpoint), so the file
holds the values training used. The format is described in ``binarybert_jax.export``; ``export.load_packed`` reads it back into
parameters for the normal model. Seconds on a CPU for BERT-base. Flags are parsed with argparse
so ``main(argv)`` can be called repeatedly in-process (tests).

``--check_input FILE --task TASK`` then checks the file it wrote against the checkpoint it came
from: both predict ``FILE`` (read as ``launch.predict`` reads ``--input``: a GLUE TSV, its layout
from its name or ``--split``, or ``-`` for lines on stdin) through ``inference.predict_examples``,
in the same batches (``--batch_size``, ``--max_length``), the packed file on its integer codes
(``--compute float``: on its unpacked float32 weights). One summary: examples, predictions that
differ (the rows ``launch.predict`` would write differently), the largest absolute logit
difference and, for a labelled file, the GLUE metrics of both. Predictions that differ end the
main with exit 4 after the summary (the file stays written); the input and task are checked
before anything is written.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence, TextIO

import numpy as np

from binarybert_jax import export, size, checkpoints, workdirs

from binarybert_jax import inference
from binarybert_jax.data import glue, tasks
from launch import arguments, common, predict

MIB = size.MIB
# The exit status of a check whose packed file predicts differently from its checkpoint.
EXIT_DISAGREES = 4


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.export", epilog=arguments.examples_from(__doc__),
                                     description="Bit-packed export of a quantized model.")
    parser.add_argument("--ckpt", required=True, help="model checkpoint directory")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    check = parser.add_argument_group("checking the file against the checkpoint")
    check.add_argument("--check_input", default=None,
                       help="a GLUE TSV (or - for stdin lines) both models predict; needs --task")
    check.add_argument("--task", default=None, help=f"the check's task: {', '.join(glue.TASK_NAMES)}")
    predict.add_reading_arguments(check)
    return parser


def _dir_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[TextIO] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    workdirs.check_output("--out", args.out, {"--ckpt": args.ckpt, "--check_input": args.check_input,
                                              "--tokenizer": args.tokenizer})
    task = examples = None
    if args.check_input is not None:
        task, examples = _check_examples(parser, args, sys.stdin if stdin is None else stdin)
    elif args.task is not None:
        parser.error("--task is for the check: pass --check_input too")
    params, spec, info = checkpoints.load_model(args.ckpt)
    info = dict(info, source_checkpoint=str(pathlib.Path(args.ckpt).absolute()))
    summary = export.export_packed(params, spec, args.out, info=info,
                                   lat_diag=checkpoints.load_lat_diag(args.ckpt))
    papers = size.model_size_bits(spec)
    acct = summary.accounting
    ckpt_bytes = _dir_bytes(pathlib.Path(args.ckpt))
    q = spec.quant

    def line(name, nbytes):
        print(f"  {name:<46}{nbytes:>14,} B{nbytes / MIB:>10.3f} MiB")

    print(f"wrote {summary.path} (W-E-A {q.wea()}, "
          f"{q.weight_method}/{q.embed_method}{', split' if q.split else ''})")
    line("file", summary.file_bytes)
    line("  tensor payload", summary.payload_bytes)
    line("  header (manifest, tensor index)", summary.header_bytes)
    line("accounting, all (weights+fp32+scales+act)", acct.total_bits // 8)
    line("accounting, papers' way (no scales/act)", papers.total_bits // 8)
    line("float32 parameters (4 B each)", summary.fp32_bytes)
    line("float32 checkpoint directory on disk", ckpt_bytes)
    print(f"  payload - accounting: {summary.overhead_bits} bits (code padding, level tables, "
          f"listed zeros); {summary.fp32_bytes / summary.file_bytes:.1f}x smaller than float32")
    if examples is None:
        return 0
    return check_agreement(args.ckpt, args.out, task, examples, where=args.check_input,
                           tokenizer=args.tokenizer, compute=args.compute,
                           max_length=args.max_length or task.max_seq_length,
                           batch_size=args.batch_size)


def _check_examples(parser, args, stdin: TextIO):
    """The check's task and examples, refused (exit 2) before anything is written."""
    if not args.task:
        parser.error(f"--check_input needs --task ({', '.join(glue.TASK_NAMES)})")
    try:
        task = tasks.get_glue_task(args.task)
    except ValueError as e:
        parser.error(f"--task: {e}")
    predict.check_positive(parser, args, ("batch_size", "max_length"))
    try:
        examples = predict.read_examples(args.check_input, task, args.split, stdin)
    except predict.SplitUnknown as e:
        parser.error(str(e))
    if not examples:
        parser.error(f"--check_input {args.check_input}: no examples")
    return task, examples


def check_agreement(ckpt, packed_path, task, examples, *, where: str, tokenizer: Optional[str],
                    compute: str, max_length: int, batch_size: int) -> int:
    """Predicts ``examples`` with the checkpoint ``ckpt`` and the packed file ``packed_path`` and
    prints one summary.

    Returns:
      0 when every prediction is the same, else ``EXIT_DISAGREES``.
    """
    source, tok, _ = predict.load_model(str(ckpt), task, tokenizer=tokenizer)
    packed, _, _ = predict.load_model(str(packed_path), task, compute=compute, tokenizer=tokenizer)
    logits = {name: inference.predict_examples(model, tok, examples, max_length, batch_size)
              for name, model in (("checkpoint", source), ("packed", packed))}
    written = {name: predict.format_predictions(task, x)[1:] for name, x in logits.items()}
    differ = [i for i, (a, b) in enumerate(zip(written["checkpoint"], written["packed"])) if a != b]
    largest = float(np.max(np.abs(logits["checkpoint"] - logits["packed"])))
    form = packed.kind if packed.kind != inference.PACKED else f"{packed.kind}, {packed.compute}"
    print(f"check on {where} ({task.name}, {len(examples)} examples, batch {batch_size}, length "
          f"{max_length}): {packed_path} ({form}) against the checkpoint {ckpt}")
    shown = ", ".join(map(str, differ[:10])) + (", ..." if len(differ) > 10 else "")
    print(f"  prediction mismatches: {len(differ)}" + (f" (rows {shown})" if differ else ""))
    print(f"  largest |logit difference|: {largest:.3g}")
    for name, x in logits.items():
        scores = predict.labelled_metrics(task, examples, x)
        if scores is not None:
            print(f"  {name} metrics: {predict.format_metrics(scores)}")
    if differ:
        print(f"error: {len(differ)} of {len(examples)} predictions of {packed_path} differ from "
              f"those of its checkpoint {ckpt}", file=sys.stderr)
        return EXIT_DISAGREES
    return 0


if __name__ == "__main__":
    common.run_main(main)
