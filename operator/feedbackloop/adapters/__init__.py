"""The only modules that talk to external systems, one per system."""
