"""Conversations: their rules (``conversation``), the history database and its recorder."""
