"""Pure placement, scoring and rebalance planning: later issues."""
