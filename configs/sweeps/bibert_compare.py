"""BiBERT 1-1-1 beside BinaryBERT's recipe forced to 1-1-1, one seed each, from one full-precision
teacher, both recorded under ``results/<tag>/{bibert,binarybert111}/s<seed>`` for README's table.

    python -m launch.sweep configs/sweeps/bibert_compare.py:epochs=0.25,teacher=runs/fidelity_mrpc_a8/base/teacher/finetune/best
    python -m launch.sweep configs/sweeps/bibert_compare.py:task=sst-2,epochs=0.2,max_length=64,teacher=...

Runs ``bibert`` and ``binarybert``. ``arg`` keys: ``teacher`` (the full-precision checkpoint both
start from and distil; required); ``task`` (mrpc); ``epochs`` (the fraction of the released epochs,
configs/bibert.py; 1; the BinaryBERT recipe splits them over its two stages); ``seed`` (42);
``max_length`` (the longest sequence, buckets at each quarter of it; 0: the task's, with buckets
at 32, 64, 96, 128); ``root`` (runs/bibert_<task>); ``tag`` (bibert_<task>, without its dash:
bibert_sst2); ``data_dir`` (the GLUE root; default $GLUE_DIR).
"""

from configs import common
from configs.bibert import RELEASED
from configs.sweeps import Record, Run


def get_runs(arg=None) -> list:
    a = common.parse_arg(arg, teacher="", task="mrpc", epochs=1.0, seed=42, max_length=0, root="",
                         tag="", data_dir="")
    if not a.teacher:
        raise ValueError("give teacher=CHECKPOINT (the full-precision model "
                         "both students start from)")
    if a.task not in RELEASED:
        raise ValueError(f"task={a.task!r}; BiBERT released settings for {sorted(RELEASED)}")
    root = a.root or f"runs/bibert_{a.task}"
    tag = a.tag or f"bibert_{a.task.replace('-', '')}"
    released = RELEASED[a.task][0]
    total, half = f"{released * a.epochs:g}", f"{released * a.epochs / 2:g}"
    of = f"({a.epochs:g} of the released {released})"
    length = a.max_length or 128
    train = {"teacher": a.teacher, **({"data_dir": a.data_dir} if a.data_dir else {}), "seed": a.seed,
             "progress_bar": False, **({"max_seq_length": a.max_length} if a.max_length else {}),
             "bucket_lengths": tuple(range(length // 4, length + 1, length // 4))}
    settings = {
        "bibert": ("bibert", f"BiBERT 1-1-1 (Bi-Attention, DMD), {total} epochs {of}"),
        "binarybert": ("binarybert111", "BinaryBERT's recipe forced to 1-1-1 (BWN, sign activations, "
                                        f"two-stage KD), {half} + {half} epochs {of}"),
    }
    return [Run(recipe, "launch.train", f"{root}/{recipe}",
                f"configs/bibert.py:task={a.task},recipe={recipe},epochs={a.epochs:g}", train,
                records=(Record(f"{root}/{recipe}", f"{tag}/{folder}/s{a.seed}", setting),))
            for recipe, (folder, setting) in settings.items()]
