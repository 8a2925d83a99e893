"""The cluster maps: sans-I/O values shared by the monitor, the OSDs and the clients."""
