"""Zoho CRM: OAuth now; the CRM bridge (attachments, record fetches) will join it."""
