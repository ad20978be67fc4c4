"""relay: an edge gateway that makes a distant cloud feel local."""

__version__ = "0.1.0"
