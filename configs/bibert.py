"""BiBERT (Qin et al., ICLR 2022): a fully binarized BERT, W1-E1-A1, with Bi-Attention and
direction-matching distillation (DMD) from a full-precision teacher, in one stage.

    python -m launch.train --config configs/bibert.py:task=mrpc --workdir runs/mrpc/bibert --config.teacher=runs/mrpc/teacher/finetune/best --config.data_dir=$GLUE_DIR

The student starts from the teacher (same shape: DMD pairs every layer and head). The released
hyperparameters per task (batch 16, 10% warmup, BertAdam): MRPC 20 epochs / lr 2e-4, SST-2 10 /
1e-4, CoLA 50 / 1e-4, STS-B 20 / 1e-4, RTE 20 / 1e-5, QNLI 10 / 1e-4, MNLI 5 / 5e-5, QQP 5 / 1e-4.
On 2 CPU cores MRPC with MiniLM takes about 4 minutes an epoch (128 tokens; less with
``"--config.bucket_lengths=(32,64,96,128)"``); ``epochs=F`` scales every task's epochs by F.

``arg`` keys: ``task``; ``recipe`` (``bibert``, default; ``binarybert``: BinaryBERT's recipe
forced to 1-1-1 for comparison: BWN weights and embedding, sign activations, softmax attention
whose probabilities become Bool(p), two-stage KD of hidden states, attention scores and logits,
with the same epochs and learning rate split over the two stages); ``epochs`` (fraction of the
released epochs, default 1); ``tiny`` (a 64-example slice, for smoke runs and tests).
"""

from configs import common

# task: (epochs, learning rate) of the released scripts (batch 16 everywhere).
RELEASED = {"mrpc": (20, 2e-4), "sst-2": (10, 1e-4), "cola": (50, 1e-4), "sts-b": (20, 1e-4),
            "rte": (20, 1e-5), "qnli": (10, 1e-4), "mnli": (5, 5e-5), "qqp": (5, 1e-4)}
RECIPES = ("bibert", "binarybert")


def get_config(arg=None):
    a = common.parse_arg(arg, task="mrpc", recipe="bibert", epochs=1.0, tiny=False)
    if a.recipe not in RECIPES:
        raise ValueError(f"config argument recipe={a.recipe!r}; allowed: {RECIPES}")
    if not a.epochs > 0:
        raise ValueError(f"config argument epochs={a.epochs!r}: a fraction of the released epochs, > 0")
    c = common.base_config(a.task)
    if c.task not in RELEASED:
        raise ValueError(f"BiBERT released no hyperparameters for {c.task}; tasks: {sorted(RELEASED)}")
    epochs, lr = RELEASED[c.task]
    epochs *= a.epochs
    c.batch_size = 16
    if a.recipe == "bibert":
        c.kd.mode = "dmd"
        c.student.quant = common.bibert_quant()
        c.stage2.update(epochs=float(epochs), learning_rate=lr)
    else:
        c.kd.mode = "two_stage"
        c.student.quant = common.quant_config(1, 1, 1, "bwn", "bwn", "sign")
        c.stage1.update(epochs=epochs / 2, learning_rate=lr)
        c.stage2.update(epochs=epochs / 2, learning_rate=lr)
    if a.tiny:
        common.shrink_for_local(c)
    return c
