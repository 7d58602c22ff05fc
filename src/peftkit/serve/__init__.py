"""Serving: one base model, many adapters, an OpenAI-compatible HTTP API."""
