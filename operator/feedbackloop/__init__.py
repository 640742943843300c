"""feedbackloop: a Kubernetes operator that keeps served ML models good in production."""

__version__ = "0.1.0"
