# Shared set-up of the scripts: one virtual environment in .venv, created on first use. The argument is the extras to
# install ("[server]" for the service, "" for the client and CLI alone); one stamp per pyproject.toml and extras.
# TORCH_SPEC picks the torch build: the default takes the CPU wheel; on a GPU machine install your CUDA
# build first (`.venv/bin/pip install torch`) or set TORCH_SPEC=torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${1:-}"
hash="$(cat pyproject.toml | sha1sum | cut -c1-12)"
stamp="$VENV/.installed-$hash$EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
if [ ! -f "$stamp" ]; then
  if [[ "$EXTRAS" == *server* ]]; then  # only the service needs torch; the client and CLI alone do not
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install -q "$TORCH_SPEC"
  fi
  "$VENV/bin/pip" install -q -e ".$EXTRAS"
  # Stamps of an older pyproject.toml are stale; those of this one (other extras) stay valid.
  find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash*" -delete
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}"
export TOKENIZERS_PARALLELISM=false
