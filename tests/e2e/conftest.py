"""A real etcd member for the fleet tests here (see etcd_support)."""

from etcd_support import etcd

__all__ = ["etcd"]
