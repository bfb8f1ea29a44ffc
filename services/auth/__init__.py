"""The OAuth 2.0 authorization server: certificate-bound access tokens for registered clients."""
