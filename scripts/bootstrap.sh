#!/usr/bin/env bash
# Create .venv and install what is missing. Safe to run again: it only installs what changed.
#   scripts/bootstrap.sh          runtime (backend, UI, both engines)
#   scripts/bootstrap.sh --dev    plus test tools and Debian's chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.installed"
want=$(cat requirements.txt requirements-fastvideo.txt requirements-dev.txt scripts/bootstrap.sh \
  | sha256sum | cut -c1-16)-$DEV

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
  # torch first, so the requirements' torch>=2.9 is already met. Override with TORCH_SPEC
  # (e.g. a CPU-only build from your own index).
  "${pip[@]}" ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
  "${pip[@]}" -r requirements.txt -r requirements-fastvideo.txt
  # fastvideo's own pins (torch, gradio) conflict with ours; its runtime imports are above.
  "${pip[@]}" --no-deps fastvideo==0.2.0
  "${pip[@]}" --no-deps -e .
  if command -v nvidia-smi >/dev/null 2>&1; then
    # Video sparse attention kernels; importing them needs a GPU driver, so GPU machines only.
    "${pip[@]}" --no-deps fastvideo-kernel==0.2.6 || echo "fastvideo-kernel not installed (VSA off)"
    # Its wheel bundles a libcuda for driver 570; on newer drivers its SM90 kernel fails to
    # create TMA descriptors. Point the bundled name at the machine's own libcuda.
    sys_libcuda=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
    if [[ -n "$sys_libcuda" ]]; then
      for bundled in "$VENV"/lib/python3*/site-packages/fastvideo_kernel.libs/libcuda-*.so*; do
        [[ -e "$bundled" ]] && ln -sf "$sys_libcuda" "$bundled"
      done
    fi
  fi
  if [[ $DEV == 1 ]]; then
    "${pip[@]}" -r requirements-dev.txt
  fi
  echo "$want" > "$STAMP"
fi
if [[ $DEV == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
