"""The SQuAD v1.1 and v2.0 runs of ``results/squad`` under the dev-split protocol (its README): the
official dev file in ``$SQUAD_DIR`` split by article, the first half training, the first 500
questions of the other half evaluating; 256-token windows (BERT's recipe: 384) and fractions of an
epoch, for CPU time; one seed (42). About an hour a version on 2 CPU cores (run it under nice).

    python -m launch.sweep configs/sweeps/squad.py --only v2

Runs, each version's in order:

    v1/teacher        0.3 epoch of the 24 training articles (124 steps of 16 windows, lr 1e-4)
                      -> results/squad/v1/teacher
    v1/loss_scale     the two KD stages' loss terms against that teacher (launch.squad_loss_scale)
                      -> results/squad/loss_scale.json
    v1/pipeline       half width 0.04 epoch; TWN 0.5x and TWS 1x 0.02 epoch a KD stage
                      -> results/squad/v1/{half,ternary,tws}
    v2/teacher        0.5 epoch of the 17 training articles (205 steps, lr 1e-4)
                      -> results/squad/v2/teacher
    v2/pipeline       half width 0.2 epoch; TWN 0.5x and TWS 1x 0.1 epoch a KD stage
                      -> results/squad/v2/pipeline/{half,ternary,tws} and its report
    v2/null_threshold the same questions with the null threshold tuned on them, and the answerable
                      ones always answered (launch.squad_null_threshold)
                      -> results/squad/v2/null_threshold.{json,md}

``arg`` keys: ``root`` (runs; the workdirs are <root>/squad1_teacher, ...).
"""

from configs import common
from configs.sweeps import Best, InResults, Record, Run

# The protocol, shared by every run: the split, the window, what is evaluated.
PROTOCOL = {"squad.dev_split": 0.5, "max_seq_length": 256, "eval_limit": 500, "eval_batch_size": 32}
TEACHER = "full precision (teacher)"
# (teacher epochs, checkpoint interval, half-width epochs, KD epochs a stage, log interval)
SCHEDULE = {1: (0.3, 40, 0.04, 0.02, 2), 2: (0.5, 80, 0.2, 0.1, 5)}


def _pipeline_overrides(half: float, kd: float, log_every: int) -> dict:
    out = {"stages.half_pruned.batches": 2, "stages.half_pruned.batch_size": 16,
           "stages.half.batch_size": 16, "stages.half.stage2.epochs": half}
    for stage in ("ternary", "tws"):
        out.update({f"stages.{stage}.batch_size": 16, f"stages.{stage}.stage1.epochs": kd,
                    f"stages.{stage}.stage2.epochs": kd})
    return {**out, "log_every_steps": log_every, "progress_bar": False}


def get_runs(arg=None) -> list:
    a = common.parse_arg(arg, root="runs")
    runs = []
    for version, (teacher_epochs, every, half, kd, log_every) in SCHEDULE.items():
        task, v = f"squad{version}", f"v{version}"
        teacher, pipeline = f"{a.root}/{task}_teacher", f"{a.root}/{task}_pipeline"
        runs.append(Run(f"{v}/teacher", "launch.train", teacher, f"configs/finetune.py:task={task}", {
            **PROTOCOL, "batch_size": 16, "stage2.epochs": teacher_epochs, "stage2.learning_rate": 1e-4,
            "log_every_steps": 5, "checkpoint_every_steps": every, "progress_bar": False},
            records=(Record(teacher, f"squad/{v}/teacher", TEACHER),)))
        if version == 1:
            runs.append(Run("v1/loss_scale", "launch.squad_loss_scale",
                            args=(Best(teacher), "--out", InResults("squad/loss_scale.json")),
                            needs=("v1/teacher",), outputs=(InResults("squad/loss_scale.json"),)))
        # v1's stages were recorded one by one, v2's as the whole pipeline (with its report).
        records = (tuple(Record(f"{pipeline}/{s}", f"squad/v1/{s}") for s in ("half", "ternary", "tws"))
                   if version == 1 else (Record(pipeline, "squad/v2/pipeline"),))
        runs.append(Run(f"{v}/pipeline", "launch.pipeline", pipeline,
                        f"configs/pipeline.py:task={task},bwn=False,adaptive=False",
                        {"stages.teacher.checkpoint": Best(teacher), **PROTOCOL,
                         **_pipeline_overrides(half, kd, log_every)},
                        records=records, needs=(f"{v}/teacher",),
                        outputs=tuple(f"{pipeline}/{s}/results.json" for s in ("half", "ternary", "tws"))))
    models = {TEACHER: Best(f"{a.root}/squad2_teacher"),
              "full precision 0.5×": Best(f"{a.root}/squad2_pipeline/half"),
              "TWN 0.5×": Best(f"{a.root}/squad2_pipeline/ternary"),
              "TWS 1× (split from TWN 0.5×)": Best(f"{a.root}/squad2_pipeline/tws")}
    runs.append(Run("v2/null_threshold", "launch.squad_null_threshold",
                    args=(InResults("squad/v2"), *((f"{name}=", ckpt) for name, ckpt in models.items())),
                    needs=("v2/teacher", "v2/pipeline"), outputs=(InResults("squad/v2/null_threshold.json"),)))
    return runs
