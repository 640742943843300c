"""The one error type the plugin reports: a message for the user, printed as `error: ...`, exit code 1."""

from __future__ import annotations


class PluginError(Exception):
    """Something the user can act on; the message is complete and never carries a secret."""
