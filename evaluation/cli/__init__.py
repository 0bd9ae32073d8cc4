"""Commands only: one module per `valle` command; nothing imports this package except the entry point."""
