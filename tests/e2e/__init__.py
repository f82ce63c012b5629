"""End-to-end tests: real registry servers driven by real clients."""
