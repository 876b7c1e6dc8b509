"""BiBERT's results table: small records of finished runs, and the README section made from them.

    # After each run: keep a record (config, dev metrics, bits, git commit) under results/bibert/.
    python -m launch.bibert_results record runs/bibert/mrpc_bibert --name "BiBERT 1-1-1" \
        --out results/bibert/mrpc_bibert.json
    # The table, written into README.md's section (and printed).
    python -m launch.bibert_results table results/bibert/*.json --readme README.md

A record holds what the row needs and how it was made: the run's resolved ``config.json``, its
``results.json`` metrics (best periodic evaluation and final), W-E-A bits and attention mode of the
student, and the git commit of the code that wrote the record. Rows keep the order of the files
given.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
from typing import Optional, Sequence

from benchmarks import markdown

SECTION = "## BiBERT results"


def git_commit() -> str:
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(workdir: pathlib.Path, name: str) -> dict:
    """The record of one finished ``launch.train`` run."""
    results_file, config_file = workdir / "results.json", workdir / "config.json"
    for f in (results_file, config_file):
        if not f.is_file():
            raise SystemExit(f"{workdir}: no {f.name}; not a finished launch.train run")
    results = json.loads(results_file.read_text())
    config = json.loads(config_file.read_text())
    q = results["spec"]["quant"]
    phases = [{"phase": p["phase"], "objective": p["objective"], "steps": p["steps"]}
              for p in results["phases"]]
    return {"name": name, "task": results["task"], "main_metric": results["main_metric"],
            "bits": f"{q['weight_bits']}-{q['embed_bits']}-{q['act_bits']}",
            "methods": "/".join(m if b < 32 else "fp32" for m, b in (
                (q["weight_method"], q["weight_bits"]), (q["embed_method"], q["embed_bits"]),
                (q["act_method"], q["act_bits"]))),
            "attention": q.get("attention", "softmax"), "kd_mode": config["kd"]["mode"],
            "phases": phases, "best": results["best"], "final": results["final"],
            "git_commit": git_commit(), "workdir": str(workdir), "config": config}


def _epochs(r: dict) -> str:
    c = r["config"]
    if r["kd_mode"] == "two_stage":
        return f"{c['stage1']['epochs']:g} + {c['stage2']['epochs']:g}"
    return f"{c['stage2']['epochs']:g}"


def table(records: list[dict]) -> str:
    metrics = [m for m in records[0]["best"] if "/" not in m]
    head = ("| model | W-E-A | weights/embedding/activations | attention | KD | epochs | lr | "
            + " | ".join(f"{m} best / final" for m in metrics) + " |")
    lines = [head, "|" + "---|" * (7 + len(metrics))]
    for r in records:
        c = r["config"]
        lr = c["stage2"]["learning_rate"]
        cells = [f"{100 * r['best'][m]:.1f} / {100 * r['final'][m]:.1f}" for m in metrics]
        lines.append(f"| {r['name']} | {r['bits']} | {r['methods']} | {r['attention']} | {r['kd_mode']} | "
                     f"{_epochs(r)} | {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(records: list[dict], files: Sequence[str], command: str) -> str:
    commits = sorted({r["git_commit"][:10] for r in records})
    tasks = sorted({r["task"] for r in records})
    return "\n".join([
        SECTION, "",
        f"{', '.join(tasks)} dev, all-MiniLM-L6-v2, one seed each; made by", "", "```", command, "```",
        "", f"from the records {', '.join(f'`{f}`' for f in files)} (each holds its run's config; "
        f"code at {', '.join(commits)}).", "", table(records), ""])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.bibert_results", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="write the record of a finished run")
    rec.add_argument("workdir")
    rec.add_argument("--name", required=True, help="the row's name in the table")
    rec.add_argument("--out", required=True, help="the record's JSON file")
    tab = sub.add_parser("table", help="print the table of records (and write it into a README)")
    tab.add_argument("records", nargs="+")
    tab.add_argument("--readme", default=None, help=f"Markdown file whose {SECTION!r} section to write")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "record":
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record(pathlib.Path(args.workdir), args.name), indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
        return 0
    records = [json.loads(pathlib.Path(f).read_text()) for f in args.records]
    argv = sys.argv[1:] if argv is None else list(argv)
    text = section(records, args.records, "python -m launch.bibert_results " + " ".join(argv))
    markdown.publish(text, args.readme, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
