"""Integrations of aprx with external data-processing engines (optional dependencies)."""
