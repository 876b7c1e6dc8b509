"""Transparent huge pages for XLA:CPU's buffers: every main runs with glibc's ``malloc`` advising
them, the command line and the user's other glibc tunables kept, and the benchmarks' children too."""

import os
import pathlib
import subprocess
import sys

import pytest

from binarybert_jax import host_memory

ROOT = pathlib.Path(__file__).resolve().parents[1]
THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _run(code: str, *args: str, **env_changes) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop(host_memory.ENV, None)
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_tunable_is_added_to_what_is_there_and_a_value_given_is_kept():
    assert host_memory.environment({})[host_memory.ENV] == "glibc.malloc.hugetlb=1"
    assert (host_memory.environment({host_memory.ENV: "glibc.malloc.tcache_count=0", "A": "1"})
            == {host_memory.ENV: "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1", "A": "1"})
    off = {host_memory.ENV: "glibc.malloc.hugetlb=0"}
    assert host_memory.environment(off) == off


RESTART = ("import os, sys\n"
           "from binarybert_jax import host_memory\n"
           "print('started', flush=True)\n"
           "host_memory.restart_with_huge_pages()\n"
           "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])\n")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables: Linux only")
def test_a_process_started_without_huge_pages_starts_again_with_them_once():
    run = _run(RESTART, "--flag", "a b", GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
    assert run.returncode == 0, run.stderr
    # Its first lines ran twice (before and after the restart), the rest once, with the same
    # arguments and the user's tunables kept.
    assert run.stdout.splitlines() == ["started", "started",
                                       "glibc.malloc.tcache_count=7:glibc.malloc.hugetlb=1 ['--flag', 'a b']"]
    started_with_it = _run(RESTART, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    assert started_with_it.stdout.splitlines() == ["started", "glibc.malloc.hugetlb=1 []"]


def test_the_mains_are_told_apart_from_other_processes():
    import launch

    for argv in (["python", "-m", "launch.train", "--config", "c.py"], ["py", "-u", "-X", "importtime", "-m",
                 "launch.sweep"], ["python", "/venv/bin/binarybert-train", "-m", "x"]):
        assert launch.started_as_a_main(argv), argv
    for argv in (["python", "-m", "pytest", "tests"], ["python", "-c", "import launch"], ["python"],
                 ["python", "-X", "binarybert-x", "script.py"], ["python", "benchmarks/x.py", "-m", "launch.a"]):
        assert not launch.started_as_a_main(argv), argv


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables: Linux only")
def test_a_main_starts_again_with_huge_pages_before_it_runs(tmp_path):
    # Every interpreter start appends its tunables to a file (sitecustomize runs at each start).
    log = tmp_path / "starts.txt"
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(repr(os.environ.get('GLIBC_TUNABLES')) + '\\n')\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    env.pop(host_memory.ENV, None)
    run = subprocess.run([sys.executable, "-m", "launch.train", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("Trains a model from an ml-collections config") == 1
    assert log.read_text().splitlines() == ["None", "'glibc.malloc.hugetlb=1'"]


def test_a_benchmark_child_runs_with_huge_pages(monkeypatch, tmp_path):
    from benchmarks import child

    (tmp_path / "print_environment.py").write_text("import json, os\nprint(json.dumps(dict(os.environ)))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv(host_memory.ENV, raising=False)
    assert child.run_module("print_environment", [])[host_memory.ENV] == "glibc.malloc.hugetlb=1"


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(),
                    reason="no transparent huge pages on this kernel")
def test_a_large_buffer_is_backed_by_huge_pages():
    code = ("import numpy as np, re\n"
            "a = np.ones(2 ** 28, np.uint8)\n"  # 256 MiB: malloc maps it
            "text = open('/proc/self/smaps_rollup').read()\n"
            "print(int(re.search(r'AnonHugePages:\\s+(\\d+)', text).group(1)))\n")
    with_pages = _run(code, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    assert with_pages.returncode == 0, with_pages.stderr
    assert int(with_pages.stdout) >= 64 * 1024  # KiB: at least a quarter of the buffer
