"""CLI command groups that live outside trtpipe/cli.py (each module adds its commands to `trtpipe.cli.app`)."""
