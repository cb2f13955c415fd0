#!/usr/bin/env bash
# The command-line smoke tests against the LOWEST versions pyproject.toml declares for the pure-Python
# dependencies (tqdm, PyYAML, huggingface_hub), so a declared lower bound is one the code works with.
# They are installed into a scratch folder that PYTHONPATH puts ahead of the project venv's newer
# copies; nothing in the venv changes. Usage: scripts/ci_lowest.sh [PYTHON] (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
LOW=$(mktemp -d)
trap 'rm -rf "$LOW"' EXIT

PINS=$("$PY" - <<'EOF'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
pure_python = {"tqdm", "pyyaml", "huggingface-hub"}
for req in project["dependencies"] + project["optional-dependencies"]["hub"]:
    name, lowest = re.match(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", req).groups()
    if name.lower().replace("_", "-") in pure_python:
        print(f"{name}=={lowest}")
EOF
)
echo "ci_lowest: testing with" $PINS
# shellcheck disable=SC2086 # one argument per pin
"$PY" -m pip install -q --disable-pip-version-check --target "$LOW" $PINS
PYTHONPATH="$LOW" "$PY" - <<'EOF'
import huggingface_hub, tqdm, yaml
print(f"ci_lowest: huggingface_hub {huggingface_hub.__version__}, tqdm {tqdm.__version__}, pyyaml {yaml.__version__}")
EOF
# the tests that exercise the command line, YAML, progress bars and the Hugging Face hub client
TESTS=()
for name in cli_core logging_progress pretrained offline loading push; do
    [ -f "tests/test_$name.py" ] && TESTS+=("tests/test_$name.py")
done
PYTHONPATH="$LOW" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
