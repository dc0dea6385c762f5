"""Benchmarks: every backend, precision and peer on identical real-text inputs, side by side in one process,
interleaved; peak memory per row in a fresh subprocess; reports as JSON, CSV, Markdown and PNG."""
