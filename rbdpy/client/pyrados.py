"""The shape of Ceph's python-rados on rbdpy's client: ``Rados`` → ``connect`` →
``open_ioctx(pool)``, so a python-rbd script runs by changing its imports
(``import rbdpy as rados``). A thin layer: the connection is ``rbdpy.client.rados.Rados``
(what ``rbdpy.connect`` returns), one per pool opened, and errors are the python-rados
classes of ``rbdpy.binding_errors``.

What differs from python-rados: the configuration is rbdpy's cluster file (``conffile`` is
a ``cluster.toml`` or a data directory; None: ``$RBDPY_CLUSTER``, then ``./rbdpy-data``);
``rados_id``, ``name``, ``clustername``, ``conf``, ``conf_defaults``, ``flags`` and
``context`` are accepted and ignored (no authentication, no ceph.conf options); an
``Ioctx`` does no object I/O of its own (images are the API: ``rbdpy.RBD``,
``rbdpy.Image``).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rbdpy import binding_errors as be
from rbdpy import config
from rbdpy.client.bridge import BridgeClosed
from rbdpy.client.rados import ClusterUnavailable
from rbdpy.client.rados import Rados as Cluster
from rbdpy.errors import RbdpyError

CONNECT_TIMEOUT = 10.0  # connect(timeout=0): as long as the CLI waits for the OSDs
LIBRADOS_OP_FLAG_FADVISE_FUA = 0x80  # a write with it waits for the OSDs' commit


@contextmanager
def translated(table: dict[int, type[be.Error]]) -> Iterator[None]:
    """rbdpy's errors as the bindings' classes (``table``: which binding's names)."""
    try:
        yield
    except be.Error:
        raise
    except RbdpyError as e:
        raise be.make_ex(e.errno or errno.EIO, str(e), table) from None
    except ClusterUnavailable as e:
        raise be.Timeout(str(e)) from None
    except BridgeClosed as e:
        raise be.ConnectionShutdown(str(e)) from None


class Rados:
    """A cluster handle like python-rados's: configure, ``connect``, ``open_ioctx``,
    ``shutdown`` (or ``with Rados(...) as cluster:``, which connects and shuts down)."""

    def __init__(self, rados_id: str | None = None, name: str | None = None,
                 clustername: str | None = None, conf_defaults: dict | None = None,
                 conffile: str | None = None, conf: dict | None = None, flags: int = 0,
                 context: object = None) -> None:
        try:
            path = config.locate(str(conffile) if conffile else None)
        except config.ConfigError as e:
            raise be.InvalidArgument(str(e)) from None
        if not path.exists():
            raise be.ObjectNotFound(f"no cluster file at {path} (run 'rbdpy cluster up')")
        try:
            self.cfg = config.load(path)
            self.options = config.ClientOptions.from_env()
        except config.ConfigError as e:
            raise be.InvalidArgument(str(e)) from None
        self.conffile = str(path)
        self.rados_id = rados_id or name
        self.state = "configuring"
        self._clusters: dict[str, Cluster] = {}  # pool name → its connection
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"rbdpy.Rados(conffile={self.conffile!r}, state={self.state!r})"

    def require_state(self, *states: str) -> None:
        if self.state not in states:
            raise be.RadosStateError(f"Rados is {self.state} (needs {' or '.join(states)})")

    def _default_pool(self) -> str:
        names = self.list_pools()
        if not names:
            raise be.ObjectNotFound(f"{self.conffile} lists no pools")
        return "rbd" if "rbd" in names else names[0]

    def _cluster(self, pool: str) -> Cluster:
        """The connection for ``pool``, made on first use."""
        with self._lock:
            c = self._clusters.get(pool)
            if c is None:
                with translated(be.RADOS_ERRORS):
                    c = self._clusters[pool] = Cluster(self.cfg, pool=pool,
                                                       options=self.options)
            return c

    def connect(self, timeout: float = 0) -> None:
        """Connect, and check the OSDs answer within ``timeout`` seconds (0: 10 s), else
        ``TimedOut``. Connecting again is a no-op."""
        self.require_state("configuring", "connected")
        if self.state == "connected":
            return
        pool = self._default_pool()
        c = self._cluster(pool)
        try:
            with translated(be.RADOS_ERRORS):
                c.wait_ready(timeout=timeout or CONNECT_TIMEOUT)
        except be.Error:
            with self._lock:
                self._clusters.pop(pool, None)
            c.close()
            raise
        self.state = "connected"

    def shutdown(self) -> None:
        """Close every connection: images still open are flushed (``rbdpy.Image`` does it,
        bounded) and give their locks back. Shutting down again is a no-op."""
        if self.state == "shutdown":
            return
        self.state = "shutdown"
        with self._lock:
            clusters, self._clusters = list(self._clusters.values()), {}
        for c in clusters:
            c.close()

    def __enter__(self) -> Rados:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> bool:
        self.shutdown()
        return False

    def list_pools(self) -> list[str]:
        return [p.name for p in self.cfg.osdmap.pools.values()]

    def pool_exists(self, pool_name: str) -> bool:
        return pool_name in self.list_pools()

    def pool_lookup(self, pool_name: str) -> int:
        """The pool's id (``ObjectNotFound`` if there is none by that name)."""
        try:
            return self.cfg.osdmap.pool_by_name(pool_name).id
        except KeyError:
            raise be.ObjectNotFound(f"no pool named {pool_name!r}") from None

    def pool_reverse_lookup(self, pool_id: int) -> str:
        p = self.cfg.osdmap.pools.get(pool_id)
        if p is None:
            raise be.ObjectNotFound(f"no pool with id {pool_id}")
        return p.name

    def open_ioctx(self, ioctx_name: str) -> Ioctx:
        """An I/O context on the pool named ``ioctx_name`` (``ObjectNotFound``: none)."""
        self.require_state("connected")
        pool_id = self.pool_lookup(ioctx_name)
        return Ioctx(self, ioctx_name, pool_id, self._cluster(ioctx_name))

    def open_ioctx2(self, pool_id: int) -> Ioctx:
        return self.open_ioctx(self.pool_reverse_lookup(pool_id))


class Ioctx:
    """A pool, as images see it: pass it to ``rbdpy.RBD`` and ``rbdpy.Image``. ``cluster``
    is its connection (an ``rbdpy.client.rados.Rados``: ``rbdpy.open_image`` takes it)."""

    def __init__(self, rados: Rados, name: str, pool_id: int, cluster: Cluster) -> None:
        self.rados = rados
        self.name = name
        self.pool_id = pool_id
        self._cluster = cluster
        self.state = "open"

    def __repr__(self) -> str:
        return f"rbdpy.Ioctx({self.name!r}, state={self.state!r})"

    @property
    def cluster(self) -> Cluster:
        if self.state != "open":
            raise be.IoctxStateError(f"the I/O context of pool {self.name!r} is closed")
        self.rados.require_state("connected")
        return self._cluster

    def get_pool_name(self) -> str:
        return self.name

    def get_pool_id(self) -> int:
        return self.pool_id

    def close(self) -> None:
        """Images opened on it stay usable until they are closed or the Rados shuts down
        (the connection belongs to the Rados)."""
        self.state = "closed"

    def __enter__(self) -> Ioctx:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False
