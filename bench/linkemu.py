"""
Run the link emulator from the command line (a thin wrapper around
relay.testing.linkemu.cli; same as ``python -m relay.testing.linkemu``)::

    python bench/linkemu.py --listen tcp:9000:interface=127.0.0.1 \
        --connect tcp:127.0.0.1:5672 --latency-ms 150 --rate-kbps 512 \
        --aggregate-kbps 8000 --reset-mean-s 20 --stall-mean-s 0
"""

from relay.testing.linkemu.cli import main

if __name__ == "__main__":
    main()
