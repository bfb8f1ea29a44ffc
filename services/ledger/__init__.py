"""The paysaga ledger service."""
