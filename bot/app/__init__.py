"""The process: command line, start-up sequence, and wiring (the one place objects are built)."""
