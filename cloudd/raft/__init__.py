"""Embedded Raft (pysyncobj): one replicated ``apply(command)``, persistence, membership."""
