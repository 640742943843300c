"""The reference model server: verified loading, /predict, /feedback, drift metrics and the feedback sink."""
