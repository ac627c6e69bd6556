"""pgtide's engine: capture schema, the sequencer, the log reader and tracking.

Nothing here speaks HTTP; `api` builds on this package, never the reverse.
"""
