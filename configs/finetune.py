"""Full-precision fine-tuning of a pretrained BERT on a GLUE task (the teacher).

    python -m launch.train --config configs/finetune.py:task=mrpc --workdir runs/mrpc/teacher --config.data_dir=$GLUE_DIR

Defaults follow the standard recipe (AdamW-style BertAdam, lr 5e-5 here, batch 32, 3 epochs, 10%
warmup, max length 128; 64 for CoLA/SST-2). About 8 minutes for MRPC with MiniLM on 2 CPU cores
with ``"--config.bucket_lengths=(32,48,64,80,96,128)" --config.group_by_length=True``; without
grouping the batches stay i.i.d. (as a padded run's) and carry more padding (87 tokens a row on
average instead of 62). Small dev sets move a point or two between seeds (MRPC accuracy: standard
deviation 1.5 over 10 seeds): compare settings over several ``--config.seed`` values;
``python -m launch.summarize runs/mrpc_s*`` prints them side by side with mean and spread.
SQuAD: ``task=squad1`` or ``squad2`` (384-token windows, data in ``$SQUAD_DIR``; ``--config.squad.*``
holds the window and answer settings, ``--config.squad.dev_split=0.5`` the dev-split protocol).
``arg`` keys: ``task``, ``tiny`` (a 64-example slice for smoke runs).
"""

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, task="mrpc", tiny=False)
    c = common.base_config(a.task)
    c.kd.mode = "supervised"
    c.stage2.epochs = 3.0
    c.stage2.learning_rate = 5e-5
    c.batch_size = 32
    c.eval_every_examples = 0
    if a.tiny:
        common.shrink_for_local(c)
    return c
