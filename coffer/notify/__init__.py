"""Notifications: webhooks that follow the event history (never the apply loop)."""
