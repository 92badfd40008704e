"""SOLLOL plugin: ollama_pool."""

# The pool (nodes, health, balancing, model management): hooks kept in their own module.
from .hooks import sollol_check_health as sollol_check_health
from .hooks import sollol_discover_backends as sollol_discover_backends
from .hooks import sollol_register_backend_kinds as sollol_register_backend_kinds
from .hooks import sollol_register_commands as sollol_register_commands
from .hooks import sollol_register_routes as sollol_register_routes
from .hooks import sollol_register_settings as sollol_register_settings

# Ollama's model store (GGUF resolution, `sollol models list`): hooks kept in their own module.
from .resolve import resolve_from_store as resolve_from_store
from .resolve import store_model_names as store_model_names
