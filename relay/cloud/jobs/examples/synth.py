"""
C{relay-job-synth [--top=MODULE] FILE.v...}: FPGA synthesis with yosys.
Writes C{netlist.json} and C{stat.txt}; yosys's log goes to stdout as it
runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay-job-synth")
    parser.add_argument("--top", default="")
    parser.add_argument("sources", nargs="+")
    args = parser.parse_args(argv)
    if args.top and not _IDENTIFIER.fullmatch(args.top):
        print(f"not a Verilog module name: {args.top!r}", file=sys.stderr)
        return 2
    top = f"-top {args.top}" if args.top else "-auto-top"
    # The sources go on yosys's command line (read by file type), never into
    # its script: a file name cannot become a yosys command.
    script = f"synth {top}; tee -o stat.txt stat; write_json netlist.json"
    print("::progress 0.05 synthesis starts", flush=True)
    os.execvp("yosys", ["yosys", "-p", script, *args.sources])


if __name__ == "__main__":
    sys.exit(main())
