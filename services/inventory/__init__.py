"""The paysaga inventory service."""
