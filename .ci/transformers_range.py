"""Print the oldest (``--oldest``) or newest (``--newest``) transformers release that pyproject.toml allows.

CI runs the whole suite on the newest and the compatibility subset on the oldest, so the declared range is the
tested one; ``--newer`` prints the releases above the range (test them, then widen it).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def declared() -> Requirement:
    """The transformers requirement of pyproject.toml's dependencies (a regex: tomllib needs Python 3.11)."""
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    return Requirement(re.search(r'^\s*"(transformers[<>=!~,.\d\s]+)"', text, re.M).group(1))


def released() -> list[Version]:
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "transformers", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(Version(v) for v in json.loads(out)["versions"] if not Version(v).is_prerelease)


def main() -> None:
    requirement = declared()
    allowed = [v for v in released() if requirement.specifier.contains(v)]
    if not allowed:
        sys.exit(f"no transformers release matches {requirement}")
    if "--oldest" in sys.argv:
        print(allowed[0])
    elif "--newer" in sys.argv:
        print(" ".join(str(v) for v in released() if v > allowed[-1]))
    else:
        print(allowed[-1])


if __name__ == "__main__":
    main()
