"""Ternary weight splitting of a model checkpoint: ternary (TWN) model → equivalent binary (BWN) model.

    python -m launch.split --ternary runs/mrpc/ternary --out runs/mrpc/tws
    python -m launch.split --ternary T --out B --only encoder/layer_0/ffn/output,pooler/dense
    python -m launch.split --ternary T --out B --only chosen_paths.txt --separate_act_quantizers

About 15 s on two CPU cores for a half-width BERT-base (67M → 134M parameters). The logic lives
in ``binarybert_jax.tws``; this main parses the command line and prints a one-line summary. The
split checkpoint holds parameters only: the next training stage starts a fresh optimizer.

Flags are parsed with argparse rather than absl: ``main(argv)`` builds a fresh parser per call, so
tests can call it in-process repeatedly, and no flag names enter absl's process-wide registry, where
they would collide with other mains' flags (``--out``) imported into the same test process.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Optional, Sequence

from binarybert_jax import tws, workdirs
from binarybert_jax.errors import UserError
from launch import arguments, common


def parse_only(value: Optional[str]) -> Optional[set[str]]:
    """The matrices named by ``--only``: a file or a comma-separated list of paths.

    A file holds a JSON list of paths, or paths separated by newlines or commas (``#`` starts a
    comment). An empty value splits nothing (every matrix becomes a single binary matrix).
    """
    if value is None:
        return None
    path = pathlib.Path(value)
    text = path.read_text() if path.is_file() else value
    if text.lstrip().startswith("["):
        return {str(p) for p in json.loads(text)}
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        names.update(p.strip() for p in line.split(",") if p.strip())
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(
        prog="python -m launch.split", epilog=arguments.examples_from(__doc__),
        description="Split a TWN ternary model checkpoint into the equivalent binary (BWN) model.")
    parser.add_argument("--ternary", required=True, help="ternary model checkpoint directory")
    parser.add_argument("--out", required=True, help="output checkpoint directory (replaced if present)")
    parser.add_argument("--only", default=None,
                        help="matrices to split (adaptive splitting): a file or a comma-separated "
                             "list of paths such as encoder/layer_0/ffn/output; the others become "
                             "single binary matrices. Default: split all.")
    parser.add_argument("--separate_act_quantizers", action="store_true",
                        help="give each half of a split layer its own input quantizer (as the "
                             "released code does) instead of one shared quantizer")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs the split. ``argv`` excludes the program name (``sys.argv[1:]`` when None).

    Returns:
      ``tws.split_checkpoint``'s summary. Raises UserError with the reason when the source is not
      a model checkpoint, not an unsplit ternary model, ``--only`` names an unknown matrix, or
      ``--out`` overlaps an input or holds something other than a model checkpoint.
    """
    args = build_parser().parse_args(argv)
    only_file = args.only if args.only and pathlib.Path(args.only).is_file() else None
    workdirs.check_output("--out", args.out, {"--ternary": args.ternary, "--only": only_file})
    kind = workdirs.workdir_kind(args.out)
    if kind not in (None, "model checkpoint"):  # --out is replaced whole
        raise UserError(f"--out {args.out} holds a {kind}, not a model checkpoint: replacing it "
                        "would delete it; write the split model elsewhere")
    try:
        summary = tws.split_checkpoint(args.ternary, args.out, only=parse_only(args.only),
                                       shared_act=not args.separate_act_quantizers)
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"split: {args.ternary}: {e}") from e
    split, unsplit = len(summary["split"]), len(summary["unsplit"])
    print(f"split {split}/{split + unsplit} matrices ({unsplit} kept as single binary matrices); "
          f"parameters {summary['params_before']:,} -> {summary['params_after']:,}; "
          f"wrote {summary['out_dir']}")
    return summary


if __name__ == "__main__":
    common.run_main(main, sys.argv[1:])
