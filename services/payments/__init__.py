"""The paysaga payments service."""
