"""CLI commands: demo (registered on trtpipe.cli.app)."""

from __future__ import annotations
