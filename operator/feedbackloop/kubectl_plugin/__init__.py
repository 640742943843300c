"""`kubectl feedbackloop`: inspect and steer FeedbackLoops from a terminal.

kubectl runs any `kubectl-<name>` executable on PATH as a plugin; the package's console script
`kubectl-feedbackloop` is this package's `main`. See docs/kubectl-plugin.md.
"""

from __future__ import annotations

from feedbackloop.kubectl_plugin.cli import main

__all__ = ["main"]
