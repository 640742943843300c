"""The one error the backtest reports: a sentence naming the file, column or flag at fault."""

from __future__ import annotations


class BacktestError(Exception):
    """Bad input or a dependency that cannot be used; the message names the column, file or flag."""
