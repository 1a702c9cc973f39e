"""The deterministic cluster simulator: cloudd's own agent, reconciler and manager on N
simulated nodes sharing one replicated log, driven by a virtual clock in fixed ticks.

Every tick: the actions due now (faults, admin requests) apply, Raft's rules are brought
up to date (``tests.sim.raft``), then each powered node in name order runs its fence
guard and whichever of its loops are due (agent every ``heartbeat_interval``, reconciler
every ``reconcile_interval``, manager every ``manager_interval``). Nothing reads real
time or randomness; the same scenario gives the same log, line for line.

The log has one line per meaningful event: ``<time> <node>/<part>: <what>``; ``raft``
lines say who reaches the majority and who leads, ``admin`` lines are requests from the
command list. After every step the simulator checks that no VM is active on two hosts
at once and writes an ``INVARIANT`` line when one is.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cloudd.agent
from cloudd.commands import make_command
from cloudd.errors import CloudError
from cloudd.failover import STORM_ALERT
from tests.factories import PW_HASH, Replica
from tests.sim.env import WALL_BASE, SimEnv
from tests.sim.host import ACTIVE, Cloudd, Host, SimCompute, compute_facts, node_inventory
from tests.sim.raft import RaftModel
from tests.sim.spec import Action, ClusterSpec, VmSpec

QUIET_FAILURES = ("node.heartbeat", "vm.report")  # logged as streaks / not at all


@dataclass(frozen=True)
class Violation:
    """A VM active on several hosts at once (must never happen)."""

    at: float
    vm: str
    hosts: tuple[str, ...]
    unleased: tuple[str, ...]  # those whose cloudd has committed no lease renewal since it started


class Simulator:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.timings = spec.timings
        self.tick_no = 0
        self.lines: list[str] = []
        self.muted = False
        self.ended = False
        self.replica = Replica()
        peers: dict[str, Any] = {}  # libvirt URI -> hypervisor: the hosts migrate live to each other
        self.hosts = {n.name: Host(n, SimCompute(peers)) for n in sorted(spec.nodes, key=lambda n: n.name)}
        for name, host in self.hosts.items():
            peers[f"sim://{name}"] = host.compute
            host.compute.can_reach = functools.partial(self._reaches, name)
        self.defined_now: set[tuple[str, str]] = set()  # domains defined, not yet started
        self.acting: dict[str, str] = {}  # host -> who acts on its hypervisor now (for the log)
        for host in self.hosts.values():
            host.compute.on_power = functools.partial(self._on_power, host)
        self.envs = {name: SimEnv(self, name) for name in self.hosts}
        self.raft = RaftModel(
            self.replica, spec.voters, sorted(self.hosts), spec.sim.election_delay, spec.sim.leader_fallback, on_event=lambda m: self.note("raft", m)
        )
        self.loop = asyncio.new_event_loop()
        self.request_ids = itertools.count(1)
        self.fills = itertools.count(1)
        self.violations: list[Violation] = []
        self.twice: dict[str, tuple[str, ...]] = {}
        self.failing: set[tuple[str, str, str]] = set()  # (node, op, target) not committed lately
        self.acked: dict[str, bool] = {}  # vm id -> whether an acknowledged command wants it to exist
        self.warmed = False
        self._bootstrap()

    # --- time and log --------------------------------------------------------------

    @property
    def now(self) -> float:
        return round(self.tick_no * self.spec.sim.tick, 6)

    def note(self, who: str, message: str) -> None:
        if not self.muted:
            self.lines.append(f"{self.now:7.1f} {who}: {message}")

    def log_text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def close(self) -> None:
        self.loop.close()

    # --- setting up ----------------------------------------------------------------

    def _bootstrap(self) -> None:
        """The replicated state at time 0: the cluster, its nodes registered and up, the
        VMs of cluster.json created (and placed where it says). Applied directly."""
        spec, voters = self.spec, self.spec.voters
        first = voters[0]
        self._apply("cluster.init", {
            "cluster_id": "sim", "name": "sim", "max_voters": len(voters),
            "admin": {"name": "admin", "password_hash": PW_HASH},
            "node": {"name": first, "raft_addr": "10.0.0.1:7000", "api_addr": "10.0.0.1:8000"},
        })
        others = [n for n in voters if n != first] + sorted(n.name for n in spec.nodes if not n.voter)
        for i, name in enumerate(others, start=2):
            self._apply("cluster.join_token_create", {"token_id": f"join-{name}", "key": "ab" * 16, "expires_at": WALL_BASE + 3600})
            self._apply("node.admit", {
                "name": name, "raft_addr": f"10.0.0.{i}:7000" if name in voters else None, "api_addr": f"10.0.0.{i}:8000",
                "membership": "voter" if name in voters else "replica", "join_token_id": f"join-{name}",
            })
        self._apply("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
        for name, flavor in sorted(spec.flavors.items()):
            self._apply("flavor.create", {"name": name, **flavor})
        self._apply("cluster.settings_set", {"shared_vm_storage": True, **spec.settings})
        for node in spec.nodes:
            self._apply("node.register", {
                "name": node.name, "roles": list(node.roles), "inventory": node_inventory(node),
                **({"compute": compute_facts(node.name)} if "hypervisor" in node.roles else {}),
            })
            seq = self._apply("node.heartbeat", {"name": node.name})["lease_seq"]
            self._apply("node.status_set", {"name": node.name, "status": "up", "observed_seq": seq})
        for vm in spec.vms:
            self._apply("vm.create", vm.create_args())
            self.acked[vm.id] = True
            if vm.node:
                self._apply("vm.place", {"id": vm.id, "node": vm.node})
        for host in self.hosts.values():
            host.boot(0.0, self.timings)
            self._start_cloudd(host)
        self.raft.leaderless_since = -spec.sim.election_delay  # the cluster starts with a leader

    def _apply(self, op: str, args: dict[str, Any]) -> Any:
        outcome = self.replica.apply(make_command(op, args, f"boot-{next(self.request_ids)}", WALL_BASE, {"user": "admin"}))
        if "error" in outcome:
            raise ValueError(f"cluster.json: {op} {args}: {outcome['error']['message']}")
        return outcome["result"]

    def _start_cloudd(self, host: Host) -> None:
        def feed_guard() -> None:
            if host.guard is not None and host.guard.feed(host.monotonic(self.now), self.timings.fence_after):
                self._guard_fence(host, "a feed came too late")

        host.start_cloudd(self.now, self.timings, feed_guard)
        self.raft.set_running(host.name, True)

    def _warm_up(self) -> None:
        """One silent pass at time 0: agents register, reconcilers start the placed VMs,
        the leader takes note; the log then opens with what runs where."""
        self.muted = True
        self.raft.update(self.now)
        self._run_due()
        self.muted = False
        leader = self.raft.leader
        self.note("raft", f"{leader} leads (term {self.raft.term}); voters {', '.join(self.spec.voters)}")
        state = self.replica.state
        for vm_id, vm in sorted(state.vms.items()):
            where = f"{vm['state']} on {vm['node']}" if vm["node"] else vm["state"]
            ha = f"ha, priority {vm['ha_priority']}" if vm["ha"] else "not ha"
            self.note("sim", f"vm {vm_id} ({vm['ram_mb']} MiB, {ha}): {where}")
        self._check_invariant()
        self.warmed = True

    # --- running ------------------------------------------------------------------

    def run(self, actions: list[Action], until: float | None = None) -> str:
        """Run from now until ``until`` (default: cluster.json's), applying ``actions`` at
        their times; returns the whole log so far."""
        until = self.spec.sim.until if until is None else until
        pending = list(actions)
        if not self.warmed:
            self._warm_up()
        while self.now <= until + 1e-9 and not self.ended:
            while pending and pending[0][0] <= self.now + 1e-9 and not self.ended:
                _, name, args = pending.pop(0)
                self.act(name, *args)
            if self.ended:
                break
            self.raft.update(self.now)
            self._run_due()
            self.tick_no += 1
        return self.log_text()

    def _run_due(self) -> None:
        t = self.timings
        for host in self.hosts.values():
            if not host.powered:
                continue
            if host.guard is not None and host.guard.tick(host.monotonic(self.now)):
                self._guard_fence(host, f"no feed for {host.guard.fence_after:g}s")
            c = host.cloudd
            if c is None:
                continue
            loops: list[tuple[str, float, Callable[[SimEnv], Awaitable[Any]] | None]] = [
                ("agent", t.heartbeat_interval, c.agent.step),
                ("reconcile", self.spec.sim.reconcile_interval, self._reconcile_pass(c) if c.reconciler else None),
                ("manager", t.manager_interval, c.manager.step),
            ]
            for part, interval, step in loops:
                if step is None or self.now + 1e-9 < c.due[part]:
                    continue
                c.due[part] = max(c.due[part] + interval, self.now + 1e-9)
                self._step(host, part, step)

    @staticmethod
    def _reconcile_pass(c: Cloudd) -> Callable[[SimEnv], Awaitable[Any]]:
        """As ``cloudd.daemon``: the migration pass, then the VM pass."""

        async def reconcile(env: SimEnv) -> None:
            assert c.reconciler is not None and c.migrations is not None
            await c.migrations.step(env)
            await c.reconciler.step(env)

        return reconcile

    def _step(self, host: Host, part: str, step: Callable[[SimEnv], Awaitable[Any]]) -> None:
        c = host.cloudd
        assert c is not None
        env = self.envs[host.name]
        env.component = part
        who = self.acting[host.name] = f"{host.name}/{part}"
        fenced = c.reconciler.fenced if c.reconciler else False
        leading = (c.manager.leading, c.manager.term)
        try:
            self.loop.run_until_complete(step(env))
        except Exception as exc:  # noqa: BLE001 - a bug in cloudd: its loop would log it and go on
            self.note(who, f"ERROR {type(exc).__name__}: {exc}")
        self.defined_now.clear()
        if c.reconciler is not None and c.reconciler.fenced != fenced:
            if c.reconciler.fenced and c.agent.lease is not None:
                self.note(who, f"self-fence: no lease renewal for {c.agent.lease.stale_for(env.monotonic()):.1f}s")
            else:
                self.note(who, "lease valid again: VMs here are managed again")
        if (c.manager.leading, c.manager.term) != leading:
            if c.manager.leading:
                self.note(who, f"leading in term {c.manager.term}: lease ages start from zero")
            else:
                self.note(who, "no longer the leader")

    def _guard_fence(self, host: Host, why: str) -> None:
        who = self.acting[host.name] = f"{host.name}/guard"
        active = host.active()
        self.note(who, f"fence: {why}: destroying {len(active)} VMs")
        for vm_id in active:
            host.compute.destroy(vm_id)

    def _reaches(self, source: str, target: str) -> bool:
        """Whether a host's libvirt reaches another's: powered, same side of a partition."""
        return self.hosts[target].powered and self.raft.group.get(source) == self.raft.group.get(target)

    def _on_power(self, host: Host, vm_id: str, old: str, new: str) -> None:
        if (old, new) == ("absent", "shut_off"):
            self.defined_now.add((host.name, vm_id))
            return  # defined, not running: logged with the start that follows, if any
        if (host.name, vm_id) in self.defined_now and old == "shut_off":
            old = "absent"
        self.defined_now.discard((host.name, vm_id))
        view = self.raft.state_of(host.name)
        vm = view.vms.get(vm_id)
        stale = f" (stale copy: the VM is on {vm['node']})" if new == "absent" and vm and vm["node"] not in (None, host.name) else ""
        self.note(host.compute.note_as or self.acting.get(host.name, f"{host.name}/?"), f"domain {vm_id}: {old} -> {new}{stale}")
        self._check_invariant()

    def _check_invariant(self) -> None:
        active: dict[str, list[str]] = {}
        for name, host in self.hosts.items():
            if host.powered:
                for vm_id in host.active():
                    active.setdefault(vm_id, []).append(name)
        twice = {vm_id: tuple(names) for vm_id, names in active.items() if len(names) > 1}
        for vm_id, names in sorted(twice.items()):
            if self.twice.get(vm_id) != names:
                unleased = tuple(n for n in names if self.hosts[n].cloudd is not None and not self.hosts[n].cloudd.renewed)  # type: ignore[union-attr]
                self.violations.append(Violation(self.now, vm_id, names, unleased))
                self.note("INVARIANT", f"VM {vm_id} is active on {' and '.join(names)} at once")
        for vm_id in sorted(set(self.twice) - set(twice)):
            self.note("INVARIANT", f"VM {vm_id} is active on one host again")
        self.twice = twice

    # --- commands -----------------------------------------------------------------

    def propose(self, env: SimEnv, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A node proposes: commits now, or raises like the production proposer."""
        node, who = env.node_name, f"{env.node_name}/{env.component}"
        host = self.hosts[node]
        why = self.raft.can_commit(node)
        if why is not None:
            if op == "node.heartbeat":
                if host.cloudd is not None and host.cloudd.renewal_failing_since is None:
                    host.cloudd.renewal_failing_since = self.now
                    self.note(who, f"lease renewal not committed ({why})")
            elif op not in QUIET_FAILURES and (node, op, _target(op, args)) not in self.failing:
                self.failing.add((node, op, _target(op, args)))  # said once until it commits
                self.note(who, f"{op} {_target(op, args)}: not committed ({why})")
            raise CloudError("unavailable", f"the cluster did not commit the request ({why}); it may still commit: retry with the same request id")
        if op == "node.heartbeat" and host.cloudd is not None:
            host.cloudd.renewed = True
            if host.cloudd.renewal_failing_since is not None:
                self.note(who, f"lease renewed (none committed for {self.now - host.cloudd.renewal_failing_since:.1f}s)")
                host.cloudd.renewal_failing_since = None
        self.failing = {key for key in self.failing if key[0] != node}
        return self.commit(who, op, args, {"node": node})

    def admin(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """A request from the command list, through any node that reaches the leader."""
        if self.raft.leader is None:
            self.note("admin", f"{op} {_target(op, args)}: not committed (no leader)")
            return None
        outcome = self.commit("admin", op, args, {"user": "admin"})
        return None if "error" in outcome else outcome

    def commit(self, who: str, op: str, args: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        before = self._summary()
        raw = make_command(op, args, f"sim-{next(self.request_ids)}", WALL_BASE + self.now, actor)
        outcome = self.replica.apply(raw)
        if "error" in outcome:
            error = outcome["error"]
            if error["code"] == "internal":
                self.note(who, f"ERROR {op} {_target(op, args)}: {error['message']}")
            elif op != "node.heartbeat":
                self.note(who, f"{op} {_target(op, args)}: refused: {error['message']}")
        else:
            self._describe(who, op, args, outcome["result"])
        self._note_changes(who, op, args, before)
        return outcome

    def _describe(self, who: str, op: str, args: dict[str, Any], result: Any) -> None:
        if op == "node.register":
            self.note(who, f"registered ({', '.join(args['roles'])})")
        elif op == "vm.failover":
            self.note(who, f"failover of vm {args['id']} from {args['from_node']} to {args['node']}")
        elif op == "vm.unplaceable":
            self.note(who, f"vm {args['id']} stays pending: {args['reason']}")
        elif op == "vm.migrate":
            mig = result["migration"]
            self.note(who, f"vm {args['id']}: {mig['mode']} migration {mig['source']} -> {mig['target']}" + (f" ({args['reason']})" if args.get("reason") else ""))
        elif op == "vm.migration_step":
            self.note(who, f"vm {args['id']}: migration step {args['phase']}" + (f" ({args['reason']})" if args.get("reason") else ""))
        elif op == "vm.migration_cancel":
            self.note(who, f"vm {args['id']}: migration cancel: {result['cancel']}" + (f" ({args['reason']})" if args.get("reason") else ""))
        elif op == "vm.leftovers_cleaned":
            self.note(who, f"vm {args['id']}: leftovers on {args['node']} removed")
        elif op == "vm.failover_waiting":
            self.note(who, f"vm {args['id']} waits: {args['reason']}")

    def _summary(self) -> dict[str, Any]:
        state = self.replica.state
        return {
            "vms": {vm_id: (vm["state"], vm["node"]) for vm_id, vm in state.vms.items()},
            "nodes": {name: (n["status"], n["maintenance"]) for name, n in state.nodes.items()},
            "storm": ((state.cluster.get("alerts") or {}).get(STORM_ALERT) or {}).get("message"),
        }

    def _note_changes(self, who: str, op: str, args: dict[str, Any], before: dict[str, Any]) -> None:
        after = self._summary()
        for name in sorted(after["nodes"]):
            (old_status, old_maint), (status, maint) = before["nodes"].get(name, ("-", False)), after["nodes"][name]
            if old_maint != maint:
                self.note(who, f"node {name}: maintenance {'on' if maint else 'off'}")
            if old_status != status:
                reason = f" ({args['reason']})" if op == "node.status_set" and args.get("reason") else ""
                self.note(who, f"node {name}: {old_status} -> {status}{reason}")
        for vm_id in sorted(set(before["vms"]) | set(after["vms"])):
            old, new = before["vms"].get(vm_id), after["vms"].get(vm_id)
            if old == new:
                continue
            if old is None:
                self.note(who, f"vm {vm_id}: created ({new[0]})")
            elif new is None:
                self.note(who, f"vm {vm_id}: gone")
            elif old[1] == new[1]:
                self.note(who, f"vm {vm_id}: {old[0]} -> {new[0]}" + (f" on {new[1]}" if new[1] else ""))
            else:
                self.note(who, f"vm {vm_id}: {old[0]}" + (f" on {old[1]}" if old[1] else "") + f" -> {new[0]} on {new[1]}")
        if before["storm"] != after["storm"]:
            self.note(who, f"storm alert: {after['storm']}" if after["storm"] else "storm alert cleared")

    # --- actions (the command list) -----------------------------------------------------

    def act(self, name: str, *args: Any) -> None:
        getattr(self, f"do_{name}")(*args)
        self.raft.update(self.now)  # the next action already meets the new situation
        self._check_invariant()

    def do_end(self) -> None:
        self.note("sim", "end")
        self.ended = True

    def do_power_off(self, node: str) -> None:
        host = self.hosts[node]
        self.note("sim", f"power off {node}")
        if not host.powered:
            return
        self.acting[node] = f"{node}/power"
        host.power_loss()
        self.raft.set_running(node, False)

    def do_power_on(self, node: str) -> None:
        host = self.hosts[node]
        self.note("sim", f"power on {node}")
        if host.powered:
            return
        host.boot(self.now, self.timings)
        self._start_cloudd(host)

    def do_kill_cloudd(self, node: str) -> None:
        host = self.hosts[node]
        self.note("sim", f"kill cloudd on {node} (its VMs keep running)")
        host.cloudd = None
        self.raft.set_running(node, False)

    def do_start_cloudd(self, node: str) -> None:
        host = self.hosts[node]
        self.note("sim", f"start cloudd on {node}")
        if host.powered and host.cloudd is None:
            self._start_cloudd(host)

    def do_isolate(self, node: str) -> None:
        self.note("sim", f"isolate {node} from the network")
        self.raft.group[node] = max(self.raft.group.values()) + 1

    def do_partition(self, groups: list[list[str]]) -> None:
        self.note("sim", "partition " + " | ".join(", ".join(sorted(g)) for g in groups))
        for name in self.raft.group:
            self.raft.group[name] = 0
        for i, group in enumerate(groups):
            for name in group:
                self.raft.group[name] = i

    def do_heal(self) -> None:
        self.note("sim", "network healed")
        for name in self.raft.group:
            self.raft.group[name] = 0

    def do_create_vm(self, vm: dict[str, Any]) -> None:
        spec = VmSpec(**{**vm, "nodes": tuple(vm.get("nodes", ()))})
        ha = f", ha priority {spec.priority}" if spec.ha else ""
        self.note("sim", f"create vm {spec.id} ({spec.flavor}{ha})")
        if self.admin("vm.create", spec.create_args()) is not None:
            self.acked[spec.id] = True

    def do_delete_vm(self, vm_id: str) -> None:
        self.note("sim", f"delete vm {vm_id}")
        if self.admin("vm.delete", {"id": vm_id}) is not None:
            self.acked[vm_id] = False

    def do_stop_vm(self, vm_id: str) -> None:
        self.note("sim", f"stop vm {vm_id}")
        self.admin("vm.stop", {"id": vm_id})

    def do_start_vm(self, vm_id: str) -> None:
        self.note("sim", f"start vm {vm_id}")
        self.admin("vm.start", {"id": vm_id})

    def do_kill_vm(self, vm_id: str, node: str) -> None:
        host = self.hosts[node]
        self.note("sim", f"vm {vm_id}'s qemu dies on {node}")
        self.acting[node] = f"{node}/qemu"
        if vm_id in host.compute.defined:
            host.compute.kill(vm_id)

    def do_maintenance(self, node: str, on: str, drain: str | None = None) -> None:
        self.note("sim", f"maintenance {on} for {node}" + (f" (drain {drain})" if drain else ""))
        self.admin("node.maintenance_set", {"name": node, "enabled": on == "on", **({"drain": drain} if drain else {})})

    def do_migrate(self, vm_id: str, node: str, mode: str, force: bool = False) -> None:
        self.note("sim", f"migrate vm {vm_id} to {node} ({mode}{', force' if force else ''})")
        self.admin("vm.migrate", {"id": vm_id, "node": node, "mode": mode, **({"force": True} if force else {})})

    def do_cancel_migration(self, vm_id: str) -> None:
        self.note("sim", f"cancel the migration of vm {vm_id}")
        self.admin("vm.migration_cancel", {"id": vm_id})

    def do_rebalance(self) -> None:
        """An admin applies a rebalance plan (as POST /api/v1/cluster/rebalance apply=true)."""
        from cloudd.alloc.rebalance import plan_rebalance
        from cloudd.alloc.snapshot import AllocSettings, Snapshot
        from cloudd.moves import movable_without_downtime

        state = self.replica.state
        settings = AllocSettings.from_state(state.cluster)
        movable = {v["id"] for v in state.vms.values() if movable_without_downtime(v, state.nodes, True)}
        plan = plan_rebalance(Snapshot.build(state.nodes, state.vms.values(), settings), settings.rebalance_max_moves, lambda d: d.vm_id in movable)
        moves = [{"vm": m.vm_id, "from": m.source, "to": m.target} for m in plan.moves]
        self.note("sim", "rebalance: " + (", ".join(f"{m['vm']} {m['from']}->{m['to']}" for m in moves) or "nothing to move"))
        self.admin("cluster.rebalance_set", {"id": f"plan{self.tick_no}", "moves": moves})

    def do_fill(self, node: str, ram_mb: int) -> None:
        vm_id = f"fill-{node}-{next(self.fills)}"
        self.note("sim", f"fill {node} with {ram_mb} MiB (vm {vm_id}, pinned)")
        if self.admin("vm.create", {"id": vm_id, "name": vm_id, "owner": "bob", "vcpus": 1, "ram_mb": ram_mb, "disk_gb": 1, "nodes": [node]}) is not None:
            self.acked[vm_id] = True

    def do_unfill(self, node: str) -> None:
        self.note("sim", f"unfill {node}")
        for vm_id in sorted(self.replica.state.vms):
            if vm_id.startswith(f"fill-{node}-") and self.admin("vm.delete", {"id": vm_id}) is not None:
                self.acked[vm_id] = False

    # --- questions the tests ask --------------------------------------------------------

    def active_hosts(self) -> dict[str, list[str]]:
        """vm id -> the powered hosts where its domain is active now."""
        out: dict[str, list[str]] = {}
        for name, host in self.hosts.items():
            if host.powered:
                for vm_id in host.active():
                    out.setdefault(vm_id, []).append(name)
        return out


def _target(op: str, args: dict[str, Any]) -> str:
    return str(args.get("id") or args.get("name") or args.get("key") or "")


def run_scenario(spec: ClusterSpec, actions: list[Action]) -> Simulator:
    sim = Simulator(spec)
    try:
        sim.run(actions)
    finally:
        sim.close()
    return sim


__all__ = ["ACTIVE", "Simulator", "Violation", "run_scenario"]
