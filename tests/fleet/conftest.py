"""A real etcd member for the tests here (see etcd_support)."""

from etcd_support import etcd

__all__ = ["etcd"]
