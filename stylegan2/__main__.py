"""`python -m stylegan2 ...`: the command line (see stylegan2.cli)."""
from .cli import main

main(prog_name="python -m stylegan2")
