"""C{python -m relay.testing.linkemu}: see L{relay.testing.linkemu.cli}."""

from .cli import main

main()
