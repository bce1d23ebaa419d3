"""Launchers that start `python -m bertjax.train` on clusters."""
