"""Placeholder: replaced by the fix for pysyncobj's append_entries truncation."""


class SafeAppendEntriesMixin:
    pass
