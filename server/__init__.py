"""Ponder's OpenAI-compatible HTTP server: protocol, serving logic, routes, engine adapters and CLI."""
