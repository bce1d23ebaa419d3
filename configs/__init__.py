"""Training recipes: one `get_config(arg=None)` per file."""
