"""Per-stream recurrent state: byte format (codec), Redis store, in-process cache, Redis
connection, and the resolve/save steps of a batch (streams)."""
