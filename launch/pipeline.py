"""Runs the whole BinaryBERT method from one config (configs/pipeline.py has the command lines).

    python -m launch.pipeline --config configs/pipeline.py --workdir runs/pipeline_default

Each stage is skipped when its outputs exist; rerunning the command resumes an interrupted run.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with :arg.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where every stage's checkpoints and the report go.")
common.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.setup_logging()
    common.enable_compilation_cache()
    common.initialize_distributed(FLAGS)
    from binarybert_jax import pipeline
    with common.provenance(FLAGS.workdir, sys.argv):
        common.run_guarded(pipeline.run_pipeline, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    common.run_main(app.run, main, flags_parser=common.parse_flags)
