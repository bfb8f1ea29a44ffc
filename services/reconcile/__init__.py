"""The nightly reconciliation: every service's event stream against its database, the services
against each other, and our captures and refunds against the bank's settlement file."""
