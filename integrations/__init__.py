"""Integrations of the triage service with other systems (PACS), outside the serving path."""
