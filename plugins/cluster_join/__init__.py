"""SOLLOL plugin: machines join the cluster with a token (`sollol join`), over mutual-TLS links."""
