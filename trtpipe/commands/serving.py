"""CLI commands: serving (registered on trtpipe.cli.app)."""

from __future__ import annotations
