"""The OSD's crash-safe object store (see ``objectstore`` for the design).

The package re-exports the public names, so ``from rbdpy.osd.store import ObjectStore`` keeps
working whichever module a name lives in.
"""

from rbdpy.osd.store.objectstore import (
    ApplyResult,
    CmpOp,
    CommitPlan,
    ObjectStat,
    ObjectStore,
    StoreError,
    Transaction,
)

__all__ = [
    "ApplyResult",
    "CmpOp",
    "CommitPlan",
    "ObjectStat",
    "ObjectStore",
    "StoreError",
    "Transaction",
]
