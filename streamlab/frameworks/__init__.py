"""Per-framework helpers for the framework notebooks (each module says which notebook teaches it)."""
