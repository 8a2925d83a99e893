"""The PG core in the seeded simulation (sim.py): many seeds of random crashes, power losses,
restarts, partitions, message delays and connection resets against clients checked by a model;
and proof that the simulation catches a core that breaks one of the rules.

A failing seed prints the command that replays it (exactly: one seeded Random, virtual time):
    RBDPY_SIM_SEED=N .venv/bin/python -m pytest tests/osd/pg/test_sim.py -k replay
(add RBDPY_SIM_LONG=1 for a seed of the soak run). ``-m soak`` runs many long seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rbdpy.osd.pg.peering as peering
import rbdpy.osd.pg.replication as replication
from tests.osd.pg.sim import Sim, SimFailure, run_seed

DEFAULT_SEEDS = 200  # about 8 s here
SOAK_SEEDS = int(os.environ.get("RBDPY_SIM_SOAK_SEEDS", "400"))  # long ones, ~0.5 s each


def _run(seed: int, long: bool = False) -> Sim:
    try:
        return run_seed(seed, long)
    except SimFailure as e:
        env = "RBDPY_SIM_LONG=1 " if long else ""
        pytest.fail(f"{e}\nreplay: {env}RBDPY_SIM_SEED={seed} .venv/bin/python -m pytest "
                    f"tests/osd/pg/test_sim.py -k replay", pytrace=False)


@pytest.mark.parametrize("seed", range(DEFAULT_SEEDS))
def test_seed(seed: int) -> None:
    _run(seed)


def test_replay() -> None:
    """Run the seed in RBDPY_SIM_SEED (from a failure message) again."""
    seed = os.environ.get("RBDPY_SIM_SEED")
    if seed is None:
        pytest.skip("set RBDPY_SIM_SEED to replay a seed")
    _run(int(seed), long=bool(os.environ.get("RBDPY_SIM_LONG")))


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(10_000, 10_000 + SOAK_SEEDS))
def test_soak_seed(seed: int) -> None:
    _run(seed, long=True)


def test_seeds_do_something() -> None:
    """The default seeds reach the situations the core must handle (else they prove little):
    divergent writes re-executed, backfill of replicas and of a primary, pulls, down PGs,
    resends on map changes and on resets, and many client ops."""
    total: dict[str, int] = {}
    ops = 0
    for seed in range(0, DEFAULT_SEEDS, 10):
        sim = run_seed(seed)
        ops += sim.ops_done
        for k, v in sim.stats.items():
            total[k] = total.get(k, 0) + v
    assert ops > 1000
    for what in ("re-executed", "activate-backfill", "push-backfill", "push-self_backfill",
                 "push-pulled", "push-recover", "state-down", "state-peered", "resend-map",
                 "resend-reset"):
        assert total.get(what, 0) > 0, (what, total)


def _digest(seed: int, hashseed: str) -> str:
    code = ("import sys; sys.path.insert(0, '.'); from tests.osd.pg.sim import run_seed; "
            f"print(run_seed({seed}).digest)")
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True, cwd=os.getcwd())
    return out.stdout.strip()


def test_same_seed_same_run() -> None:
    """A seed gives the same run (every delivered message at the same virtual time) in
    another process with another string hash seed: nothing depends on set order."""
    a = run_seed(7).digest
    assert a == run_seed(7).digest
    assert _digest(7, "1") == _digest(7, "2") == a


# -- the simulation catches a core that breaks a rule ---------------------------------------------


def _commit_when_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden rule broken: a replica that applied a write counts as durable."""
    orig = replication.ReplicatedPrimary._replied

    def _replied(self, osd, version, committed):  # noqa: ANN001, ANN202
        f = self.inflight.get(version)
        if not committed and f is not None and osd != self.pg.osd:
            f.need_commit.discard(osd)
        return orig(self, osd, version, committed)

    monkeypatch.setattr(replication.ReplicatedPrimary, "_replied", _replied)


def _skip_up_thru(monkeypatch: pytest.MonkeyPatch) -> None:
    """Activate without the monitor having recorded up_thru for the interval."""

    def map_advanced(self):  # noqa: ANN001, ANN202
        if self.phase is peering.Phase.WAIT_UP_THRU:
            self._activate()

    monkeypatch.setattr(peering.PrimaryPeering, "map_advanced", map_advanced)


def _own_log_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Promote a stale replica: a primary takes its own log as authoritative whenever its
    copy is complete, however old."""
    orig = peering.choose_auth

    def choose_auth(states, me):  # noqa: ANN001, ANN202
        if me in states and states[me].info.complete:
            return me
        return orig(states, me)

    monkeypatch.setattr(peering, "choose_auth", choose_auth)


@pytest.mark.parametrize("breakage", [_commit_when_applied, _skip_up_thru, _own_log_wins],
                         ids=["commit-before-durable", "skip-up-thru", "stale-replica"])
def test_sim_catches(breakage, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """With the rule broken, some default seed fails (the first one found is reported)."""
    breakage(monkeypatch)
    for seed in range(DEFAULT_SEEDS):
        try:
            run_seed(seed)
        except SimFailure as e:
            print(f"seed {seed} caught it: {str(e).splitlines()[0][:300]}")
            return
    pytest.fail(f"no default seed catches {breakage.__name__}")
