"""SOLLOL plugin: llamacpp_rpc."""
