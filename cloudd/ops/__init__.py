"""Per-node actuators behind contracts (compute, storage, export, network): later issues."""
