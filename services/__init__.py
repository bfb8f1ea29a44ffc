"""The three paysaga services; each is started with ``python -m services.<name>``."""
