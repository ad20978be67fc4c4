"""
C{relay-job-checksum FILE...}: size, sha256 and a short summary of each
file, written to C{checksums.json}.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def summary(head: bytes) -> dict[str, object]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return {"text": False, "first_bytes": head[:16].hex()}
    return {"text": True, "first_line": text.split("\n", 1)[0][:120]}


def describe(path: Path) -> dict[str, object]:
    digest, size, head, lines = hashlib.sha256(), 0, b"", 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if not head:
                head = chunk[:4096]
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    return {"name": path.name.split("-", 1)[-1], "size": size, "sha256": digest.hexdigest(), "lines": lines,
            **summary(head)}


def main(argv: list[str] | None = None) -> int:
    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    report = []
    for number, path in enumerate(files):
        report.append(describe(path))
        print(f"{path.name}: {report[-1]['sha256']}", flush=True)
        print(f"::progress {(number + 1) / len(files):.3f} {number + 1} of {len(files)} files", flush=True)
    Path("checksums.json").write_text(json.dumps({"files": report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
