"""How the two KD stages' loss terms compare in scale on SQuAD v1.1: a fresh TWN W2A8 student,
initialised from the teacher, against the teacher, on 4 batches of 16 training windows.

    python -m launch.squad_loss_scale runs/squad1_teacher/finetune/best --out results/squad/loss_scale.json

Uses the dev-split protocol of ``results/squad`` (``squad.dev_split=0.5``, 256-token windows) and
writes the mean of each term (stage 1: hidden-state and attention-score MSE; stage 2: the soft
cross-entropy on start/end; and the teacher's own span loss on the labels) as JSON.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from launch import arguments, common

BATCHES, BATCH_SIZE = 4, 16


def loss_scales(teacher_dir: str) -> dict:
    import jax
    import jax.numpy as jnp

    from binarybert_jax import checkpoints, kd, resolve
    from binarybert_jax.data import batching, tasks
    from binarybert_jax.tokenizer import load_tokenizer
    from configs import ternary

    c = ternary.get_config("task=squad1")
    c.squad.dev_split, c.max_seq_length, c.teacher = 0.5, 256, teacher_dir
    params, tspec, _ = checkpoints.load_model(teacher_dir)
    task = tasks.get_task("squad1")
    sspec = resolve.student_spec(c, task)
    train, _ = resolve.load_data(c, task, load_tokenizer(resolve.tokenizer_dir(c)))
    t, s = tspec.build(), sspec.without_axis().build()
    keys = ("input_ids", "token_type_ids", "attention_mask")

    def batches():
        return batching.iterate_batches(train, BATCH_SIZE, shuffle=True, seed=0, process_index=0,
                                        process_count=1)

    b0 = next(batches())
    init = s.init(jax.random.key(0), *[jnp.asarray(b0[k][:1]) for k in keys])["params"]
    sparams, _, _ = resolve.load_init_params(c, init, None)
    out = []
    for i, b in enumerate(batches()):
        if i == BATCHES:
            break
        inputs = [jnp.asarray(b[k]) for k in keys]
        to, so = t.apply({"params": params}, *inputs), s.apply({"params": sparams}, *inputs)
        batch = {k: jnp.asarray(b[k]) for k in ("attention_mask", "labels", "example_mask")}
        one = kd.kd_losses(so, to, batch, objective="intermediate", is_regression=False, span=True)
        two = kd.kd_losses(so, to, batch, objective="prediction", is_regression=False, span=True)
        lab = kd.kd_losses(to, None, batch, objective="supervised", is_regression=False, span=True)
        terms = {**one, "prediction_loss": two["prediction_loss"], "teacher_label_loss": lab["label_loss"]}
        out.append({k: float(v) for k, v in terms.items() if k != "total"})
    return {k: float(np.mean([o[k] for o in out])) for k in out[0]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = arguments.ArgumentParser(prog="python -m launch.squad_loss_scale", description=__doc__.split("\n\n")[0],
                                      epilog=arguments.examples_from(__doc__))
    parser.add_argument("teacher", help="the fine-tuned SQuAD v1.1 teacher's checkpoint")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    from binarybert_jax import workdirs
    scales = loss_scales(args.teacher)
    workdirs.write_json(args.out, scales)
    print(scales)
    return 0


if __name__ == "__main__":
    common.run_main(main)
