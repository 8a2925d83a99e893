"""A placement group's replication and peering, as a sans-I/O core (modelled on Ceph's
ReplicatedBackend, PGLog and PeeringState).

- ``log``: the PG log (versions, entries, dups, the missing set, merging an authoritative
  log, reconciling with the objects after a crash) and its encodings.
- ``info``, ``meta``: the PG info peers exchange; the keys the PG state is persisted under.
- ``intervals``: the map history in the core's own minimal types, past intervals, the prior set.
- ``peering``, ``replication``, ``recovery``: the primary's peering, write path, and
  recovery/backfill, with what replicas and strays do for each.
- ``pg``: one OSD's copy of a PG, the state machine the daemon drives (events in, effects out:
  ``effects``; messages between OSDs: ``messages``; its role and reported states: ``states``).

A seeded in-process simulation (tests/osd/pg/sim.py) runs it with crashes, restarts, delays,
drops and partitions.
"""
