"""Worklist routing rules and the durable worklist store."""
