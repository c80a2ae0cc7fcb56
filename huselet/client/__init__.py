"""Client libraries for callers of a huselet node.

- :mod:`huselet.client.framed`: the framed ingress, blocking (stdlib + msgpack);
- :mod:`huselet.client.framed_trio`: the same for trio programs, many calls at once.

They import nothing of the daemon, so a cluster gateway can vendor them.
"""
