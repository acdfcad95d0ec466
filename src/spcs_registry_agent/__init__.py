"""Keeps Docker logged in to Snowflake's container image registry."""

__version__ = "0.1.0"
