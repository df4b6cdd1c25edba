"""Mixpanel's APIs: the export and query client, the shared rate budget, the GDPR API."""
