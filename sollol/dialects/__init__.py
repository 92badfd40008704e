"""Client dialects (Ollama, OpenAI): request and reply translation, streams, error shapes.

Used by the dispatcher and the gateway alike; imports neither.
"""
