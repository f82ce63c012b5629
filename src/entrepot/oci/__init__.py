"""The OCI distribution protocol model: pure, synchronous, no I/O."""
