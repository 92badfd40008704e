"""Forwarding: a validated request (`Call`) routed, sent to a backend, retried, and answered.

Shared by the gateway and the library; it never imports either (tests/project/test_layers.py).
"""
