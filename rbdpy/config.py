"""The cluster file (TOML) shared by the daemons and the CLI, and where to find it.

Found from ``--cluster``, then ``$RBDPY_CLUSTER``, then ``./rbdpy-data``; a directory means
its ``cluster.toml``. Paths inside are relative to the file's directory, so a data directory
can be moved or mounted elsewhere (Docker volume) and still work.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo

DEFAULT_DIR = "rbdpy-data"
FILE_NAME = "cluster.toml"


class ConfigError(Exception):
    """The cluster file is missing or wrong: a user error, shown as one line."""


@dataclass(frozen=True)
class ClientOptions:
    """A client's settings (Ceph keeps these in the client's config context; librbd reads its
    ``rbd_*`` options from it). Built once at the edge (CLI, nbdkit plugin, ``rbdpy.connect``)
    and carried by the ``Rados`` handle; nothing below reads the environment."""

    lock_lease: float = 30.0  # seconds an exclusive lock stays valid without a renewal

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientOptions:
        """Defaults, overridden by ``RBDPY_LOCK_LEASE`` (a ConfigError if it is not a
        positive number)."""
        env = os.environ if environ is None else environ
        raw = env.get("RBDPY_LOCK_LEASE", "")
        if not raw:
            return cls()
        try:
            lease = float(raw)
        except ValueError:
            lease = -1.0
        if not lease > 0:
            raise ConfigError(f"RBDPY_LOCK_LEASE={raw!r}: want a positive number of seconds")
        return cls(lock_lease=lease)


@dataclass
class ClusterConfig:
    path: Path
    osdmap: OSDMap
    osd_data: dict[int, Path]

    @property
    def dir(self) -> Path:
        return self.path.parent


def locate(explicit: str | None = None) -> Path:
    """The cluster file path (which may not exist yet): an existing file whatever its name
    (``--cluster ./mycluster.conf``), a directory's ``cluster.toml``, a ``*.toml`` path to
    be written, else a data directory to be. Anything else that exists (a socket, a path
    through a file) is a ConfigError saying so."""
    raw = explicit or os.environ.get("RBDPY_CLUSTER") or DEFAULT_DIR
    p = Path(raw).absolute()
    try:
        st = p.stat()
    except FileNotFoundError:
        return p if p.suffix == ".toml" else p / FILE_NAME
    except OSError as e:  # ENOTDIR: a path through a file; EACCES
        raise ConfigError(f"cluster path {raw}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return p / FILE_NAME
    if stat.S_ISREG(st.st_mode):
        return p
    raise ConfigError(f"cluster path {raw} is neither a cluster file nor a data directory")


def load(path: Path) -> ClusterConfig:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no cluster file at {path} (run 'rbdpy cluster up' first)") from None
    except OSError as e:
        raise ConfigError(f"cannot read the cluster file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a cluster file (TOML): {e}") from None
    m = OSDMap(epoch=int(doc.get("cluster", {}).get("epoch", 1)))
    data: dict[int, Path] = {}
    try:
        for o in doc.get("osds", []):
            m.osds[int(o["id"])] = OSDInfo(int(o["id"]), str(o["host"]), int(o["port"]),
                                           weight=float(o.get("weight", 1.0)))
            data[int(o["id"])] = path.parent / str(o.get("data", f"osd.{o['id']}"))
        for p in doc.get("pools", []):
            m.pools[int(p["id"])] = PoolInfo(int(p["id"]), str(p["name"]),
                                             size=int(p.get("size", 1)),
                                             min_size=int(p.get("min_size", 1)),
                                             pg_num=int(p.get("pg_num", 64)))
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}: bad entry ({e})") from None
    if not m.osds:
        raise ConfigError(f"{path}: no OSDs listed")
    return ClusterConfig(path, m, data)


def dump(cfg: ClusterConfig) -> str:
    lines = ["# rbdpy cluster file (written by 'rbdpy cluster up')", "[cluster]",
             f"epoch = {cfg.osdmap.epoch}", ""]
    for o in cfg.osdmap.osds.values():
        rel = os.path.relpath(cfg.osd_data[o.id], cfg.dir)
        lines += ["[[osds]]", f"id = {o.id}", f'host = "{o.host}"', f"port = {o.port}",
                  f'data = "{rel}"', f"weight = {o.weight}", ""]
    for p in cfg.osdmap.pools.values():
        lines += ["[[pools]]", f"id = {p.id}", f'name = "{p.name}"', f"size = {p.size}",
                  f"min_size = {p.min_size}", f"pg_num = {p.pg_num}", ""]
    return "\n".join(lines)
