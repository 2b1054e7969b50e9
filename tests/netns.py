"""Another host on this machine: a network namespace joined to ours by a veth pair.

What the intruder test runs from. Inside the namespace, 127.0.0.1 is the namespace's own loopback, so the
server's loopback-only ports are as unreachable as from another machine; only the host side of the veth
pair (``host_ip``) is reachable, as a LAN address would be. Needs root (CI and this machine run as root);
``intruder_namespace`` yields None where the namespace cannot be made, and the caller says what it ran
instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Namespace:
    name: str
    host_ip: str  # our side of the veth pair: the address the server listens on
    ip: str  # the intruder's address

    def command(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def intruder_namespace() -> Iterator[Namespace | None]:
    tag = os.getpid() % 10_000
    octet = 1 + os.getpid() % 250
    ns = Namespace(f"mm-intruder-{tag}", f"10.231.{octet}.1", f"10.231.{octet}.2")
    host_if, ns_if = f"mmh{tag}", f"mmi{tag}"
    try:
        _ip("netns", "add", ns.name)
    except (OSError, subprocess.CalledProcessError):
        yield None
        return
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for args in (
            ("addr", "add", f"{ns.ip}/24", "dev", ns_if),
            ("link", "set", ns_if, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("netns", "exec", ns.name, "ip", *args)
        yield ns
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", ns.name)  # takes the veth pair with it
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)
