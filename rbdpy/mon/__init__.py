"""The monitor: the only writer of the OSDMap (rbdpy.maps).

``state.Monitor`` is its sans-I/O core: events in (``events``), effects out, time passed in.
``store.MonStore`` persists its epochs crash-safely; ``migrate`` turns a static cluster
file's map into its first epoch.
"""
