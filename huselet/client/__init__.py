"""Client-side helpers for callers of a huselet node (standard library only).

:mod:`huselet.client.signing` signs requests for nodes whose ``[auth]`` names a
keys file. Nothing here imports trio or any third-party package, so a cluster
gateway or a plain Python caller can vendor or import it as is.
"""
