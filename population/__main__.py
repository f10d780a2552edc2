"""`python -m population`: see population/cli.py."""
import sys

from population.cli import main

if __name__ == "__main__":
    sys.exit(main())
