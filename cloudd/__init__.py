"""cloudd: a KVM cloud whose every node serves the API, replicated through embedded Raft."""

__version__ = "0.1.0"
