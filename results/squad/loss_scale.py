# The stage-1 and stage-2 loss terms of a fresh TWN W2A8 student (initialised from the teacher) against
# the teacher, on 4 batches of 16 training windows: how their scales compare on SQuAD (results/squad/run.sh).
import sys, json, numpy as np, jax, jax.numpy as jnp
from binarybert_jax import checkpoints, kd, resolve
from binarybert_jax.model import ModelSpec
from binarybert_jax.data import batching, tasks
from binarybert_jax.tokenizer import load_tokenizer
from configs import ternary
teacher_dir = sys.argv[1]
c = ternary.get_config("task=squad1"); c.squad.dev_split = 0.5; c.max_seq_length = 256; c.teacher = teacher_dir
params, tspec, _ = checkpoints.load_model(teacher_dir)
task = tasks.get_task("squad1")
sspec = resolve.student_spec(c, task)
train, _ = resolve.load_data(c, task, load_tokenizer(resolve.tokenizer_dir(c)))
t, s = tspec.build(), sspec.without_axis().build()
b0 = next(batching.iterate_batches(train, 16, shuffle=True, seed=0, process_index=0, process_count=1))
init = s.init(jax.random.key(0), *[jnp.asarray(b0[k][:1]) for k in ("input_ids", "token_type_ids", "attention_mask")])["params"]
sparams, _, _ = resolve.load_init_params(c, init, None)
out = []
for i, b in enumerate(batching.iterate_batches(train, 16, shuffle=True, seed=0, process_index=0, process_count=1)):
    if i == 4: break
    inputs = [jnp.asarray(b[k]) for k in ("input_ids", "token_type_ids", "attention_mask")]
    to, so = t.apply({"params": params}, *inputs), s.apply({"params": sparams}, *inputs)
    batch = {k: jnp.asarray(b[k]) for k in ("attention_mask", "labels", "example_mask")}
    one = kd.kd_losses(so, to, batch, objective="intermediate", is_regression=False, span=True)
    two = kd.kd_losses(so, to, batch, objective="prediction", is_regression=False, span=True)
    lab = kd.kd_losses(to, None, batch, objective="supervised", is_regression=False, span=True)
    out.append({k: float(v) for k, v in {**one, "prediction_loss": two["prediction_loss"], "teacher_label_loss": lab["label_loss"]}.items() if k != "total"})
print(json.dumps({k: float(np.mean([o[k] for o in out])) for k in out[0]}, indent=1))
