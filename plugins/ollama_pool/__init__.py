"""SOLLOL plugin: ollama_pool."""
