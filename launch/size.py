"""Model sizes as the papers count them (1 bit per binary weight, 2 per ternary, 32 per float32
parameter), for a checkpoint, a packed file, a preset, or the papers' own models.

    python -m launch.size --ckpt runs/mrpc/tws                  # a model checkpoint (its spec)
    python -m launch.size --packed model.safetensors           # a packed file (its manifest)
    python -m launch.size --preset bert-base --bits 1-1-8      # BWN, full width
    python -m launch.size --preset bert-base --bits 1-1-8 --width 0.5 --split   # TWS
    python -m launch.size --paper                              # ours beside the papers' numbers

Counts from parameter shapes only (``jax.eval_shape``): a second or so, no weights are read. The
accounting lives in ``binarybert_jax.size``, whose docstring says what is counted and why.
Flags are parsed with argparse so ``main(argv)`` can be called repeatedly in-process (tests).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from binarybert_jax import size
from binarybert_jax.model import ModelSpec

from launch import arguments, common

PRESETS = {"bert-base": size.BERT_BASE}


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.size", epilog=arguments.examples_from(__doc__),
                                     description="Model size accounting (papers' way).")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="model checkpoint directory (reads its model.json)")
    src.add_argument("--packed", help="packed .safetensors file (reads its manifest)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="architecture preset")
    src.add_argument("--paper", action="store_true",
                     help="BERT-base sizes of the papers' models, ours beside theirs")
    parser.add_argument("--bits", default="32-32-32", help="W-E-A bits for --preset, e.g. 1-1-8")
    parser.add_argument("--width", type=float, default=1.0,
                        help="width multiplier for --preset (0.5: half the heads and FFN)")
    parser.add_argument("--split", action="store_true", help="ternary-weight-split model")
    parser.add_argument("--weight_method", default=None,
                        help="weight quantizer (default: bwn for 1 bit, twn for 2, uniform above)")
    parser.add_argument("--embed_method", default=None, help="word embedding quantizer")
    parser.add_argument("--num_labels", type=int, default=2)
    parser.add_argument("--no_head", action="store_true", help="leave the task head out")
    parser.add_argument("--include_scales", action="store_true",
                        help="count the float32 scales in the total (the papers do not)")
    parser.add_argument("--include_act_params", action="store_true",
                        help="count activation clip values / LSQ steps in the total")
    return parser


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    if args.ckpt:
        from binarybert_jax import checkpoints
        return ModelSpec.from_dict(checkpoints.read_model_meta(args.ckpt)["spec"])
    if args.packed:
        from binarybert_jax import export
        return ModelSpec.from_dict(export.read_manifest(args.packed)["spec"])
    return size.preset_spec(args.bits, args.width, args.split, PRESETS[args.preset],
                            args.num_labels, args.weight_method, args.embed_method)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.paper:
        print(size.comparison_table(size.paper_comparison()))
        return 0
    spec = spec_from_args(args)
    q = spec.quant
    report = size.model_size_bits(spec, include_head=not args.no_head,
                                  include_scales=args.include_scales,
                                  include_act_params=args.include_act_params)
    c = spec.config
    print(f"{c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads x {c.head_dim}, "
          f"FFN {c.intermediate_size}, vocab {c.vocab_size}; W-E-A {q.wea()} "
          f"({q.weight_method}/{q.embed_method}){', split' if q.split else ''}")
    print(report.table())
    return 0


if __name__ == "__main__":
    common.run_main(main)
