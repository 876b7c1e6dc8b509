"""Quantized student distilled from a fine-tuned teacher with two-stage KD (TWN weights).

TernaryBERT (W2-E2-A8, the teacher's width; the student starts from the teacher)::

    python -m launch.train --config configs/ternary.py:task=mrpc --workdir runs/mrpc/ternary --config.teacher=runs/mrpc/teacher/finetune/best --config.data_dir=$GLUE_DIR

BinaryBERT's half-width ternary stage (``width=0.5``; the teacher and the initialisation are the
half-width full-precision model, as in the released scripts)::

    python -m launch.train --config configs/ternary.py:task=mrpc,half_width --config.teacher=HALF_FP --config.init_checkpoint=HALF_FP --workdir runs/mrpc/twn_half

``arg`` keys: ``task``; ``act_bits`` (8: uniform with learnable clips; 4: LSQ, and the student's FFN
activation switched to ReLU as in the released 4-bit scripts); ``weight_bits``/``embed_bits``
(2 by default); ``half_width`` (the released BinaryBERT hyperparameters: batch 16, lr 2.5e-5 / 1e-5,
2 epochs per stage, an evaluation every 1,600 training examples, as in every stage of the
pipeline's ``full`` recipe); ``tiny``.
TernaryBERT's scripts: batch 32 (CoLA 16), lr 2e-5, 3 epochs. Stage 1 on MRPC with MiniLM takes
about 10 minutes on 2 CPU cores, stage 2 about 10.
"""

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, task="mrpc", act_bits=8, weight_bits=2, embed_bits=2,
                         half_width=False, tiny=False)
    c = common.base_config(a.task)
    c.kd.mode = "two_stage"
    lsq = a.act_bits <= 4
    c.student.quant = common.quant_config(a.weight_bits, a.embed_bits, a.act_bits, "twn", "twn",
                                          "lsq" if lsq else "uniform")
    c.student.hidden_act = common.student_hidden_act(c.student.quant)
    if a.half_width:
        c.batch_size = 16
        c.stage1.update(epochs=2.0, learning_rate=2.5e-5)
        c.stage2.update(epochs=2.0, learning_rate=1e-5)
        c.eval_every_examples = 1600
    else:
        c.batch_size = 16 if c.task == "cola" else 32
        c.stage1.update(epochs=3.0, learning_rate=2e-5)
        c.stage2.update(epochs=3.0, learning_rate=2e-5)
    if a.tiny:
        common.shrink_for_local(c)
    return c
