"""`python cli.py …` runs the trtpipe command line (same as the `trtpipe` console script)."""

from trtpipe.cli import main

main()
