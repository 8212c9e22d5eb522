"""mingpt-c: a small, fast, complete transformer toolkit on a C core."""
__version__ = "0.1.0"
