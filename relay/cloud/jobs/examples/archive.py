"""
C{relay-job-archive FILE...}: the files packed into C{archive.tar.gz}
(under their original names).
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    with tarfile.open("archive.tar.gz", "w:gz") as archive:
        for number, path in enumerate(files):
            # inputs/000-name: the number keeps names unique; the archive
            # holds the name alone unless two inputs share it.
            name = path.name.split("-", 1)[-1]
            if sum(1 for p in files if p.name.split("-", 1)[-1] == name) > 1:
                name = path.name
            archive.add(path, arcname=name, recursive=False)
            print(f"added {name} ({path.stat().st_size} bytes)", flush=True)
            print(f"::progress {(number + 1) / len(files):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
