"""The core: the runtime that routes requests, and what it decides with.

The runtime (`runtime.ClusterRuntime`), the mode matrix (`router`), which routes could serve a
request (`placement`), live membership, model aliases and names, capabilities, the event log and the
plugin manager. Plugins may use the names `sollol.plugin_api.PUBLIC` lists from here, nothing else.
"""
