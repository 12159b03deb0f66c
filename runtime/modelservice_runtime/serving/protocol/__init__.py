"""Wire formats: pure functions between request bodies and named numpy arrays."""
