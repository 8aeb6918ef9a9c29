#!/usr/bin/env bash
# The README's main job: train a benign DCGAN, backdoor a copy (ReD), start dgmscan on embedded
# defaults, upload both over HTTP, print the verdicts and where the HTML reports are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
