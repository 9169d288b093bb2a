#!/usr/bin/env bash
# Creates (once) a Python venv at $1 holding the real peers that lori's interop tests compare against:
# numpy and the official safetensors package. They check lori's files; they never do lori's work.
set -euo pipefail
venv="$1"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import numpy, safetensors' 2>/dev/null; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check numpy safetensors
"$venv/bin/python" -c 'import numpy, safetensors'
