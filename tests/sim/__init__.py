"""A deterministic simulator of a cloudd cluster (pve-ha-manager's regression simulator
is the model): cloudd's own ``Agent``, ``VmReconciler`` and ``Manager`` on N simulated
nodes, one shared replicated log, a virtual clock in fixed ticks.

- ``spec``: ``cluster.json`` / ``cmdlist.json`` as data; the actions a command list has;
- ``raft``: who reaches the majority, who leads (and in which term), what each node reads;
- ``env``: the ``Env`` each node's loops get;
- ``host``: a machine (``FakeCompute``, its clock, the fence guard) and its cloudd process;
- ``simulator``: the tick loop, the log, the invariant check, the actions;
- ``runner``: ``python -m tests.sim.runner tests/scenarios/<name>`` prints a scenario's log.

Simplifications (what the simulator does not model):
- a proposal commits at once or fails at once (no proposer retries, deadlines or
  latency): a renewal tried during an election fails instead of waiting ~0.5 s for it;
- nodes on the majority side read the shared state as it is now (no apply lag); a node
  off it reads a frozen copy taken when it left (its replica stops applying);
- partitions are symmetric groups (no one-way links, loss or latency);
- no volumes, storage or network agents; the agent's host inventory comes from
  cluster.json and its usage is idle (the ``Agent`` is handed both), hypervisor calls
  never hang;
- loops run exactly at their intervals from cloudd's start, in node-name order within a
  tick (agent, reconciler, manager); the fence guard is ``cloudd.fence_guard.GuardState``
  checked once per tick.
"""
