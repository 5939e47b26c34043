#!/usr/bin/env bash
# GPU smoke + throughput of DPO training: TRL + DeepSpeed ZeRO-2 then ZeRO-3, one GPU, no Ray.
#
#   bash bench/train_gpu.sh                 # 20 steps per stage, one JSON line per run (bench/README.md)
#   bash bench/train_gpu.sh --pytest        # tests/gpu (skipped without CUDA)
#   bash bench/train_gpu.sh --allow-cpu --tiny --steps 8    # CPU check of the same path
#
# The GPU machine has torch/transformers/accelerate but not trl, datasets, deepspeed (and their
# small pure-Python deps): those travel as wheels in .whl/ (git-ignored; see bench/README.md) and
# are installed into /tmp/site, which goes first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 - <<'PY'
import importlib.metadata as m, json
names = ("torch", "transformers", "accelerate", "trl", "datasets", "deepspeed", "pydantic", "pyarrow", "huggingface_hub")
print(json.dumps({"versions": {n: m.version(n) for n in names}}))
PY
if [ "${1:-}" = "--pytest" ]; then
  shift
  exec python3 -m pytest tests/gpu -q -p no:cacheprovider "$@"
fi
exec python3 bench/train_gpu.py "$@"
