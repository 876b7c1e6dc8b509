"""SQuAD v2.0 under the dev-split protocol with the null threshold tuned on the evaluation questions
(the official script's ``best_exact`` / ``best_f1``), and the answerable questions' EM/F1 when an
answer is always given: what the spans are worth where the threshold of training's evaluation (0)
answers "no answer" to every question.

    python -m launch.squad_null_threshold OUT_DIR NAME=CHECKPOINT...

Evaluates each checkpoint on the questions the records were scored on (the first 500 questions of
the held-out articles of ``$SQUAD_DIR/dev-v2.0.json`` at ``--config.squad.dev_split=0.5``),
256-token windows as in training; ``launch.predict`` with ``--null_threshold 1e9`` (always the
best span) gives the predictions and the null-score differences, ``squad_metrics.evaluate_v2`` the
metrics. Writes ``OUT_DIR/null_threshold.json`` and ``OUT_DIR/null_threshold.md`` (the table).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from binarybert_jax import squad_metrics, workdirs
from binarybert_jax.data import squad
from binarybert_jax.errors import UserError
from launch import arguments, common, predict

DEV_SPLIT, EVAL_LIMIT, MAX_LENGTH = 0.5, 500, 256
ALWAYS_ANSWER = 1e9   # above every null-score difference (postprocess caps them at 1e9)


def eval_part() -> list:
    """The held-out articles cut to their first EVAL_LIMIT questions (``squad.eval_set``'s cut)."""
    _, data = squad.read_dataset(squad.split_path("", "2.0", "dev"))
    _, held_out = squad.split_by_article(data, DEV_SPLIT)
    keep = {ex.qid for ex in squad.examples_from_dataset(held_out)[:EVAL_LIMIT]}
    return [{**a, "paragraphs": [{**p, "qas": [q for q in p["qas"] if q["id"] in keep]}
                                 for p in a["paragraphs"]]} for a in held_out]


def build_parser():
    parser = arguments.ArgumentParser(prog="python -m launch.squad_null_threshold",
                                      description=__doc__.split("\n\n")[0],
                                      epilog=arguments.examples_from(__doc__))
    parser.add_argument("out_dir", help="where null_threshold.json and null_threshold.md go")
    parser.add_argument("models", nargs="+", metavar="NAME=CHECKPOINT",
                        help="a row name and the SQuAD v2.0 model checkpoint it evaluates")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    bad = [m for m in args.models if "=" not in m]
    if bad:
        raise UserError(f"{bad[0]}: expected NAME=CHECKPOINT")
    out_dir, models = pathlib.Path(args.out_dir), dict(a.split("=", 1) for a in args.models)
    data = eval_part()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        workdirs.write_json(tmp / "eval.json", {"version": "v2.0", "data": data})
        for name, ckpt in models.items():
            preds_file = tmp / name / "predictions.json"
            predict.main(["--model", ckpt, "--task", "squad2", "--input", str(tmp / "eval.json"),
                          "--out", str(preds_file), "--max_length", str(MAX_LENGTH),
                          "--null_threshold", str(ALWAYS_ANSWER)])
            preds = workdirs.read_json(preds_file)
            na = workdirs.read_json(preds_file.parent / "na_probs.json")
            m = squad_metrics.evaluate_v2(data, preds, na, na_prob_thresh=ALWAYS_ANSWER)
            results[name] = {"checkpoint": ckpt, **{k: m[k] for k in (
                "total", "HasAns_total", "NoAns_total", "HasAns_exact", "HasAns_f1",
                "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")}}
    workdirs.write_json(out_dir / "null_threshold.json", results)
    lines = ["| model | HasAns EM / F1, always answering | best EM / F1, tuned threshold | threshold (F1) |",
             "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['HasAns_exact']:.1f} / {r['HasAns_f1']:.1f} | "
                     f"{r['best_exact']:.1f} / {r['best_f1']:.1f} | {r['best_f1_thresh']:.2f} |")
    counts = next(iter(results.values()))
    lines.append("")
    lines.append(f"{counts['total']} questions ({counts['HasAns_total']} answerable, "
                 f"{counts['NoAns_total']} not); written by launch/squad_null_threshold.py.")
    workdirs.write_text(out_dir / "null_threshold.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    common.run_main(main, sys.argv[1:])
