"""SOLLOL's bundled plugins, each registered through an entry point of group `sollol`."""
