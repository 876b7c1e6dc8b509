"""SQuAD's official evaluation as a command: exact match and F1 of a predictions file.

    python -m launch.evaluate_squad dev-v1.1.json predictions.json
    python -m launch.evaluate_squad dev-v2.0.json predictions.json --na_prob_file na_probs.json

The same arguments (their dashed spellings too) and the same JSON keys as evaluate-v1.1.py /
evaluate-v2.0.py (their numbers too: ``binarybert_jax.squad_metrics``). The version is the data
file's (``version`` ``1.1`` or ``v2.0``) unless ``--version`` says it. ``--na_prob_file`` and
``--na_prob_thresh`` are v2.0's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from binarybert_jax import squad_metrics
from binarybert_jax.data import squad
from binarybert_jax.errors import UserError
from launch import arguments, common


def build_parser() -> argparse.ArgumentParser:
    p = arguments.ArgumentParser(prog="python -m launch.evaluate_squad", epilog=arguments.examples_from(__doc__),
                                description="Official SQuAD v1.1 / v2.0 evaluation (EM and F1).")
    p.add_argument("data_file", metavar="data.json", help="SQuAD dataset file (the gold answers)")
    p.add_argument("pred_file", metavar="pred.json", help="predictions: question id -> answer text")
    p.add_argument("--na_prob_file", "-n", metavar="na_prob.json",
                   help="v2.0: question id -> probability (or score) of no answer")
    p.add_argument("--na_prob_thresh", "-t", type=float, default=1.0,
                   help="v2.0: predict no answer when the probability is above this (default 1.0)")
    p.add_argument("--version", choices=squad.VERSIONS, default=None,
                   help="the evaluation script's version (default: the data file's)")
    return p


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path}: {e}") from None


def _version(recorded: str, path: str) -> str:
    for v in squad.VERSIONS:
        if recorded.lstrip("v") == v:
            return v
    raise UserError(f"{path} has version {recorded!r}; pass --version 1.1 or --version 2.0")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        recorded, data = squad.read_dataset(args.data_file)
    except OSError as e:
        raise UserError(f"data file {args.data_file}: {e}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    version = args.version or _version(recorded, args.data_file)
    predictions = _read_json(args.pred_file, "predictions file")
    if not isinstance(predictions, dict):
        raise UserError(f"predictions file {args.pred_file}: expected an object mapping question ids "
                        "to answer texts")
    if version == "1.1":
        if args.na_prob_file:
            raise UserError("--na_prob_file is evaluate-v2.0's; this is a v1.1 evaluation")
        print(json.dumps(squad_metrics.evaluate_v1(data, predictions)))
        return 0
    na_probs = _read_json(args.na_prob_file, "na-prob file") if args.na_prob_file else None
    if na_probs is not None:
        missing = [k for k in predictions if k not in na_probs]
        if missing:
            raise UserError(f"na-prob file {args.na_prob_file} lacks {len(missing)} predicted ids "
                            f"(e.g. {missing[0]})")
    print(json.dumps(squad_metrics.evaluate_v2(data, predictions, na_probs, args.na_prob_thresh),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(common.run_guarded(main))
