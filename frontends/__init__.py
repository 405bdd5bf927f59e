"""userplane's frontends: thin adapters that drive the core through a Registry."""
