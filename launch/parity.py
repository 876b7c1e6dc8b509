"""Parity of our full-precision MiniLM with Hugging Face transformers: the figures README quotes.

    python -m launch.parity                     # prints them and writes results/parity/parity.json
    python -m launch.tables                     # renders them (and every results table) into README

Runs all-MiniLM-L6-v2 (``assets.minilm_dir()``) through ``hf_import.parity_errors`` against
transformers' PyTorch ``BertModel`` outputs stored in ``minilm_hf_parity.npz`` (``tests/fixtures``,
else ``../shared/fixtures``; made where torch is installed, it holds the inputs and transformers'
hidden states, attention probabilities and pooler output) and prints the max abs error per output.
Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Optional, Sequence

from launch import arguments, common

# The tests' copy where the checkout carries one, else the shared folder beside the checkout.
FIXTURE_PLACES = (common.REPO_ROOT / "tests" / "fixtures" / "minilm_hf_parity.npz",
                  common.REPO_ROOT.parent / "shared" / "fixtures" / "minilm_hf_parity.npz")
DEFAULT_FIXTURE = next((p for p in FIXTURE_PLACES if p.is_file()), FIXTURE_PLACES[-1])
DEFAULT_OUT = common.REPO_ROOT / "results" / "parity" / "parity.json"
# What README states, in the order it states it: (key of parity_errors, what it is).
HEADLINE = (("hidden_states", "every hidden state at real tokens"),
            ("attention_probs", "attention probabilities"),
            ("pooler", "the pooler output"))


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="python -m launch.parity", epilog=arguments.examples_from(__doc__),
                                     description="Max abs errors of our MiniLM against transformers.")
    parser.add_argument("--fixture", default=str(DEFAULT_FIXTURE),
                        help="transformers' outputs (.npz); default tests/fixtures/minilm_hf_parity.npz, else "
                             "../shared/fixtures/minilm_hf_parity.npz")
    parser.add_argument("--model", default=None, help="Hugging Face checkpoint (default: MiniLM's)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="the record launch.tables renders (default results/parity/parity.json; "
                             "'' writes none)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from binarybert_jax import assets, hf_import, workdirs
    fixture = pathlib.Path(args.fixture)
    if not fixture.is_file():
        raise FileNotFoundError(f"--fixture {fixture}: no such file (the parity fixture lives in "
                                "tests/fixtures or ../shared/fixtures beside the checkout)")
    model = args.model or str(assets.minilm_dir())
    if args.out:
        workdirs.check_output("--out", args.out, {"--fixture": fixture, "--model": model})
    errors = hf_import.parity_errors(model, fixture)
    for key, what in HEADLINE:
        print(f"{key:<16} {errors[key]:.1e}  max abs error over {what}")
    if args.out:
        workdirs.write_json(args.out, {"kind": "parity", "model": pathlib.Path(model).name,
                                          "fixture": fixture.name, **common.git_state(),
                                          "errors": errors})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    common.run_main(main)
