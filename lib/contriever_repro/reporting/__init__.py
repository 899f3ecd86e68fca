"""Reporting: paper-shaped tables and figures (workflow/rules/reporting.smk)."""
