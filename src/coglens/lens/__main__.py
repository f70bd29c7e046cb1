"""``python -m coglens.lens --config FILE.yaml [options]``: the same as ``coglens extract``.

This is the form ``torchrun --nproc_per_node N -m coglens.lens --config FILE.yaml`` starts on every rank.
"""

import sys

from coglens.cli.main import main

if __name__ == "__main__":
    sys.argv[1:1] = ["extract"]
    main()
