"""The OSD's crash-safe object store (``objectstore`` has the design).

The package re-exports the public names, so ``from rbdpy.osd.store import ObjectStore`` keeps
working whichever module a name lives in.
"""

from rbdpy.osd.store.errors import StoreError
from rbdpy.osd.store.objectstore import ApplyResult, CommitPlan, ObjectStat, ObjectStore
from rbdpy.osd.store.transaction import CmpOp, Transaction, TxnDecodeError

__all__ = [
    "ApplyResult",
    "CmpOp",
    "CommitPlan",
    "ObjectStat",
    "ObjectStore",
    "StoreError",
    "Transaction",
    "TxnDecodeError",
]
