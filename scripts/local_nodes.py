"""Two SLURM nodes on the host, for multi-node runs without a cluster; the multi-node tests
run on them. As root (network namespaces, and scripts/local_slurm.py's daemons):

    python -m scripts.local_nodes start /tmp/nodes       # then: the exports it prints
    python -m scripts.local_nodes run /tmp/nodes 2 -- hostname -i     # a command on node2
    python -m scripts.local_nodes stop /tmp/nodes

Each node is a network namespace joined to a bridge in a private /24 that exists only on this
machine (no route out, no other network touched); its processes run in a mount and a UTS
namespace of their own, with the node's hostname (node1, node2) and a hosts file bind-mounted
over /etc/hosts that names the nodes and the controller (the machine's /etc/hosts is left as it
is). munged and slurmctld run in the machine's namespaces, one slurmd in each node's. The
namespaces are entered with `nsenter --net` and `unshare --mount --uts`: `ip netns exec`
remounts /sys, which hides /sys/fs/cgroup, and slurmd refuses to start without it.

`start` first removes what an earlier start left behind in the same folder (a killed test
session): its daemons, the nodes' processes, the namespaces and the bridge. `stop` removes all
of it, whatever state the jobs are in.
"""

import argparse
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from scripts.local_slurm import LocalSlurm, SlurmError, end, run, running

NAMESPACE = "bn-repro-node"  # + the node's number; node1's namespace is bn-repro-node1
BRIDGE = "bnrepro-br"
LINK = "bnrepro-n"  # + the node's number: the bridge's end of the node's link
NODE_INTERFACE = "eth0"  # the node's end of its link, inside its namespace
CANDIDATES = ipaddress.ip_network("10.231.0.0/16")  # the /24s the bridge may take
OWNER = "owner"  # the file of the folder that holds the pid of the process that started it


class Network:
    """The nodes' namespaces, links and hosts files: node i (from 1) at the subnet's address
    10 + i, the controller (the host) at the subnet's first address."""

    def __init__(self, root: Path, count: int = 2):
        self.root, self.count = root, count
        self.subnet = None

    def names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.count + 1)]

    def address(self, node: int) -> str:
        return str(self.subnet.network_address + 10 + node)

    @property
    def controller(self) -> str:
        return str(self.subnet.network_address + 1)

    def hosts_file(self, node: int) -> Path:
        return self.root / f"hosts-node{node}"

    def up(self) -> None:
        self.subnet = free_subnet()
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("address", "add", f"{self.controller}/{self.subnet.prefixlen}", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for node in range(1, self.count + 1):
            name = f"{NAMESPACE}{node}"
            ip("netns", "add", name)
            ip(
                "link",
                "add",
                f"{LINK}{node}",
                "type",
                "veth",
                "peer",
                NODE_INTERFACE,
                "netns",
                name,
            )
            ip("link", "set", f"{LINK}{node}", "master", BRIDGE, "up")
            inside = ("-n", name)
            address = f"{self.address(node)}/{self.subnet.prefixlen}"
            ip(*inside, "address", "add", address, "dev", NODE_INTERFACE)
            ip(*inside, "link", "set", NODE_INTERFACE, "up")
            ip(*inside, "link", "set", "lo", "up")
        self.write_hosts(loopback=False)

    def write_hosts(self, loopback: bool) -> None:
        """Each node's /etc/hosts; with loopback, as Debian and Ubuntu write it: the node's own
        name at 127.0.1.1, before its address on the bridge. Written in place: a bind mount
        holds on to the file, not to its name."""
        names = [f"{self.address(i)} node{i}" for i in range(1, self.count + 1)]
        for node in range(1, self.count + 1):
            own = [f"127.0.1.1 node{node}"] if loopback else []
            lines = ["127.0.0.1 localhost", *own, f"{self.controller} {socket.gethostname()}"]
            with self.hosts_file(node).open("w") as file:
                file.write("\n".join([*lines, *names]) + "\n")

    def on(self, node: int, command: list) -> list[str]:
        """command as it runs on the node: in its network namespace, as its hostname, with its
        hosts file."""
        enter = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        return [
            "nsenter",
            f"--net=/run/netns/{NAMESPACE}{node}",
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--",
            "sh",
            "-c",
            enter,
            "sh",
            str(self.hosts_file(node)),
            f"node{node}",
            *map(str, command),
        ]

    def processes(self, node: int) -> list[int]:
        listed = subprocess.run(
            ["ip", "netns", "pids", f"{NAMESPACE}{node}"], capture_output=True, text=True
        )
        return [int(pid) for pid in listed.stdout.split()]

    def down(self) -> None:
        """Kill every process in the nodes' namespaces, then remove them, their links and the
        bridge; also those of an earlier start that was killed before it could."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        for name in re.findall(rf"^({NAMESPACE}\d+)", listed.stdout, re.MULTILINE):
            node = int(name.removeprefix(NAMESPACE))
            for pid in self.processes(node):
                end(pid, 0)
            subprocess.run(["ip", "link", "delete", f"{LINK}{node}"], capture_output=True)
            ip("netns", "delete", name)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


class LocalNodes(LocalSlurm):
    """LocalSlurm with its node daemons on the Network's nodes."""

    def __init__(self, root: Path, count: int = 2):
        super().__init__(root)
        self.network = Network(self.root, count)

    def pid_files(self) -> dict[Path, str]:
        nodes = {self.root / f"slurmd-{name}.pid": "slurmd" for name in self.network.names()}
        return {**nodes, **super().pid_files()}

    def start(self, timeout_s: float = 60) -> None:
        if os.geteuid() != 0:
            raise SlurmError("network namespaces need root")
        if socket.gethostname() in self.network.names():
            raise SlurmError(f"the host is called {socket.gethostname()}, as a node would be")
        self.remove_leftovers()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / OWNER).write_text(str(os.getpid()))
        self.network.up()
        super().start(timeout_s)

    def remove_leftovers(self) -> None:
        owner = self.root / OWNER
        if owner.exists():
            pid = int(owner.read_text())
            if pid != os.getpid() and running(pid):
                raise SlurmError(f"process {pid} runs a cluster in {self.root}: stop it first")
            self.stop()
            shutil.rmtree(self.root)
        self.network.down()  # namespaces another folder's start left

    def start_nodes(self) -> None:
        for node in range(1, self.network.count + 1):
            run(self.network.on(node, ["slurmd", "-f", self.conf]), env=self.env)

    def configuration(self) -> str:
        # slurmd -C: the host's node line (name, CPUs, sockets, cores, memory in MB), which
        # every node shares
        line = run(["slurmd", "-C"], capture=True).splitlines()[0]
        hardware = line.split(maxsplit=1)[1]
        nodes = "\n".join(
            f"NodeName={name} NodeAddr={self.network.address(i)} {hardware} State=UNKNOWN"
            for i, name in enumerate(self.network.names(), start=1)
        )
        return self.common_configuration(self.network.controller, "-%n", nodes)

    def stop(self, grace_s: float = 20) -> None:
        try:
            super().stop(grace_s)
        finally:
            self.network.down()
            (self.root / OWNER).unlink(missing_ok=True)


def ip(*arguments: str) -> None:
    run(["ip", *arguments])


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of CANDIDATES that none of the host's addresses or routes overlaps."""
    taken = []
    for listing in (["ip", "-4", "-o", "address"], ["ip", "-4", "route"]):
        output = run(listing, capture=True)
        for found in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", output):
            taken.append(ipaddress.ip_network(found, strict=False))
    for subnet in CANDIDATES.subnets(new_prefix=24):
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise SlurmError(f"every /24 of {CANDIDATES} is in use on the host")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "run", "stop"))
    parser.add_argument("folder", type=Path, help="configuration, state and logs")
    parser.add_argument("node", type=int, nargs="?", help="run: the node, from 1")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="run: the command, after --")
    args = parser.parse_args()
    cluster = LocalNodes(args.folder)
    try:
        if args.action == "start":
            started = time.monotonic()
            cluster.start()
            print(f"export SLURM_CONF={cluster.conf} PATH={cluster.bin}:$PATH")
            print(f"# two nodes idle after {time.monotonic() - started:.1f} s", file=sys.stderr)
        elif args.action == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return subprocess.run(
                cluster.network.on(args.node, command), env=cluster.env
            ).returncode
        else:
            cluster.stop()
    except SlurmError as error:
        print(f"local_nodes {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
