#!/usr/bin/env bash
# The one prepared GPU run of issue 18 (see benchmarks/README.md): the compiled CUDA step's correctness test, then
# the generation benchmark in bfloat16 at batch 1 / 8 / 32, eager against compiled. Run from the repository root
# in an environment with CogLens installed (pip install -e ".[dev]").
set -uo pipefail
rc=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python -m pytest -q -p no:cacheprovider tests/engine/test_static_decode.py -k "cuda or compiled" || rc=$?
python benchmarks/generate.py --device cuda --dtypes bfloat16 --modes eager,compiled --batches 1,8,32 --new-tokens 64 || rc=$?
exit $rc
