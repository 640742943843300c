"""The pure decision core: no I/O, deterministic given `now`. import-linter enforces it."""
