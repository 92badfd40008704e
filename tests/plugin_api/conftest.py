"""Plugins kept as they were scaffolded are packages with tests of their own, run on purpose."""

collect_ignore_glob = ["scaffolded_2_4/*"]
