"""What is kept, no torch: SQL records and sessions, the artifact store, the model registry."""
