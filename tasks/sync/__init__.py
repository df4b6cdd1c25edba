"""Keeping in sync: identity mappings, reconciliation, the GDPR registry and purge."""
