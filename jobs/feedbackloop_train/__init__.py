"""The built-in retrain Job: scikit-learn training, champion/challenger, error analysis, artifacts."""
