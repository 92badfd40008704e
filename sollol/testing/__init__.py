"""Helpers that SOLLOL's tests and plugin authors share: real processes, emulators, tiny models."""
