"""`python -m sollol` runs the CLI."""

from sollol.cli import main

main()
