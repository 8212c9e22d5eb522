"""The `mingpt` command line, run from the source tree: `python cli.py --help`.

The commands live in the package (mingpt_c/cli/, one module per command
group); an installed mingpt-c runs the same group as the `mingpt` console
script (pyproject.toml: mingpt = "mingpt_c.cli:main").
"""
from mingpt_c.cli import main

if __name__ == "__main__":
    main()
