"""The replicated state model: plain dicts, changed only by command handlers."""
