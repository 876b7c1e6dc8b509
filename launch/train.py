"""Trains a model from an ml-collections config (see each file in configs/ for its command line).

    python -m launch.train --config configs/finetune.py:task=mrpc --workdir runs/mrpc/teacher [--config.batch_size=16 ...] [--distributed]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with :arg.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
common.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.setup_logging()
    common.enable_compilation_cache()
    import jax
    common.initialize_distributed(FLAGS)
    from binarybert_jax import train
    with common.provenance(FLAGS.workdir, sys.argv):
        results = common.run_guarded(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0:
        print(json.dumps({k: results.get(k) for k in ("task", "protocol", "selection", "dev_selected",
                                                        "dev_final", "best_checkpoint",
                                                        "final_checkpoint", "interrupted", "step")
                          if k in results}, indent=2))


if __name__ == "__main__":
    common.run_main(app.run, main, flags_parser=common.parse_flags)
