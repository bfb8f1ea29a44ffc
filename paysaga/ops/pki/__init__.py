"""The project's own certificate authority: create it, issue service and client certificates."""
