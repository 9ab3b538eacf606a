"""The supervisor daemon: imports no user code and no torch."""
