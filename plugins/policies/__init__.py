"""SOLLOL plugin: policies."""
