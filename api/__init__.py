"""pgtide's HTTP layer and command line, composed on top of the `cdc` engine."""
