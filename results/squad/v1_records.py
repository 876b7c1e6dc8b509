"""The SQuAD v1.1 runs of ``run.sh`` as records (``results/squad/v1/<model>/record.json``), for
``python -m launch.tables``: written from this directory's committed reports, because the runs'
workdirs were not kept, so ``launch.record`` (which reads a workdir) cannot record them.

    PYTHONPATH=. python results/squad/v1_records.py

One record per row of ``pipeline_results.json`` (the teacher's row is the given checkpoint of
``teacher_results.json``: the same numbers;
its setting named as in ``run_v2.sh``), with the resolved configs, the commits the
README names (teacher 5e25220, pipeline 1d10951) and no wall time (none was reported).
"""

from __future__ import annotations

import pathlib

from binarybert_jax import checkpoints
from launch import record

HERE = pathlib.Path(__file__).resolve().parent
COMMITS = {"teacher": "5e25220556e84b69d115eb56ac86ff7cbce71a41",
           "pipeline": "1d10951acdc82ad06b8d00027faa479c39fd130b"}


def main() -> None:
    report = checkpoints.read_json(HERE / "pipeline_results.json")
    config = checkpoints.read_json(HERE / "pipeline_config.json")
    teacher = checkpoints.read_json(HERE / "teacher_results.json")
    for order, row in enumerate(report["rows"]):
        given = row["model"] == "teacher"
        if given and (row["best"], row["final"]) != (teacher["best"], teacher["final"]):
            raise ValueError("pipeline_results.json's teacher row differs from teacher_results.json")
        source = "teacher_results.json, teacher_config.json" if given else "pipeline_results.json, pipeline_config.json"
        rec = {
            "format": record.RECORD_FORMAT, "version": record.RECORD_VERSION,
            "name": f"squad/v1/{row['model']}", "order": order,
            "setting": "full precision (teacher)" if given else row["description"],
            "task": report["task"], "seed": config["seed"], "main_metric": report["main_metric"],
            "best": row["best"], "best_step": teacher["phases"][-1]["best_step"] if given else None,
            "final": row["final"], "wall_seconds": None,
            "phases": teacher["phases"] if given else None,
            "git_commits": [COMMITS["teacher" if given else "pipeline"]], "git_dirty": None,
            "provenance": {"source": f"results/squad/{source} (the run's workdir was not kept)",
                           "invocations": []},
            "workdir": row["checkpoint"].split("/")[0] + "/" + row["checkpoint"].split("/")[1],
            "spec": teacher.get("spec") if given else None,
            "config": checkpoints.read_json(HERE / "teacher_config.json") if given else config,
            "submission": None}
        checkpoints.write_json(HERE / "v1" / row["model"] / record.RECORD_FILE, record.portable(rec))
        print(f"wrote results/squad/v1/{row['model']}/{record.RECORD_FILE} ({rec['setting']})")


if __name__ == "__main__":
    main()
