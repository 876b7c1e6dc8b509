"""Exports a trained quantized model checkpoint as one bit-packed ``.safetensors`` file.

    python -m launch.export --ckpt runs/mrpc/tws --out runs/mrpc/tws.safetensors

Binary weights take 1 bit on disk, ternary 2, k-bit k; everything else stays float32. Prints the
file size beside the size accounting (``binarybert_jax.size``) and the float32 checkpoint's size.
A LAT model is packed with the diagonal it was trained with (saved in its checkpoint), so the file
holds the values training used. The format is described in ``binarybert_jax.export``; ``export.load_packed`` reads it back into
parameters for the normal model. Seconds on a CPU for BERT-base. Flags are parsed with argparse
so ``main(argv)`` can be called repeatedly in-process (tests).
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Optional, Sequence

from binarybert_jax import export, size, checkpoints, workdirs

from launch import arguments, common

MIB = size.MIB


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.export", epilog=arguments.examples_from(__doc__),
                                     description="Bit-packed export of a quantized model.")
    parser.add_argument("--ckpt", required=True, help="model checkpoint directory")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    return parser


def _dir_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    workdirs.check_output("--out", args.out, {"--ckpt": args.ckpt})
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
    return 0


if __name__ == "__main__":
    common.run_main(main)
