"""Loopback "machines" for `ray up` with Ray's local provider (tests/test_ray_up.py).

Each node is a real sshd listening on its own loopback address (127.0.0.2, 127.0.0.3, ...: the
whole of 127/8 is this machine's), started as PID 1 of its own PID, mount and UTS namespaces:

    - its own processes: `ray stop` there (which stops every Ray process it can see) stops that
      node's Ray only, and killing the node's sshd ends everything that ever ran on it;
    - its own /tmp (Ray's sessions, the local provider's state file, the workers' clones);
    - its own home directory, at the same path on every node (root's home in the node's
      /etc/passwd), holding the node's "image": a Python environment over this machine's packages
      (pip offline: no index, no build isolation) and a `ray` command running in it;
    - its own hostname.

The rest of the filesystem is shared with this machine, and so is the network (the nodes' Ray
ports must not collide). A key made here lets root in on every node (no password). The nodes end
with `stop()`, or with the test process however it dies (the parent-death signal of each node).

`client(argv)` runs a command as from the machine that types `ray up`: its own home (holding the
key) and /tmp, in a mount namespace of its own, so nothing of the run lands in this machine's.

`unavailable()` says why such nodes cannot run here (not root, a tool missing, no namespaces), or
None; `start()` raises NodesUnavailable when an sshd does not come up (its address and port taken).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
# unshare under setpriv: the node gets SIGKILL when the test process dies, whatever kills it
NAMESPACES = ["setpriv", "--pdeathsig", "KILL",
              "unshare", "--pid", "--mount", "--uts", "--fork", "--mount-proc", "--kill-child"]
KEY_NAME = "ray_loopback_ed25519"       # auth.ssh_private_key of ray_cluster_local.yaml, under ~/.ssh
START_TIMEOUT_S = 15.0
# Not 22, so that an sshd of this machine listening on all addresses does not stand in the way.
# Ray's ssh has no port setting: every machine's ~/.ssh/config names it (SSH_CLIENT_CONFIG).
SSH_PORT = 22022

SSHD_CONFIG = """\
ListenAddress {ip}:{port}
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile {root}/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100
MaxSessions 100
LogLevel ERROR
"""

# The node's own namespaces: its passwd (root's home), its home at the common path, its /tmp.
NODE_INIT = """\
set -e
mount --bind {passwd} /etc/passwd
mount --bind {root}/home {home}
mount --bind {root}/tmp /tmp
hostname {name}
cd /
exec {sshd} -D -e -f {root}/sshd_config
"""

SSH_CLIENT_CONFIG = """\
# The loopback nodes' sshd listen on this port (tests/loopback_nodes.py).
Host 127.0.0.*
    Port {port}
"""

CLIENT_INIT = """\
set -e
mount --bind {passwd} /etc/passwd
mount --bind {tmp} /tmp
exec "$@"
"""

BASHRC = """\
# This loopback machine's environment (tests/loopback_nodes.py): a Python environment of its own over
# the test machine's packages; pip offline (no index, no build isolation).
export PATH="$HOME/venv/bin:$PATH"
export PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
"""

RAY_COMMAND = """\
#!{python}
import sys
from ray.scripts.scripts import main
sys.exit(main())
"""


class NodesUnavailable(RuntimeError):
    """Loopback nodes cannot run on this machine; the message says why."""


def unavailable() -> str | None:
    """Why loopback nodes cannot run here, or None."""
    if os.geteuid() != 0:
        return "loopback nodes need root (namespaces, sshd)"
    for tool in (SSHD, "ssh", "ssh-keygen", "rsync", "unshare", "setpriv"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install openssh-server rsync)"
    probe = subprocess.run(NAMESPACES + ["true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no PID/mount/UTS namespaces here: {' '.join(probe.stderr.split()) or probe.returncode}"
    return None


@dataclass
class Node:
    name: str
    ip: str
    root: Path                  # on this machine: sshd_config, home/, tmp/, sshd.log
    process: subprocess.Popen | None = None

    @property
    def home(self) -> Path:     # the node's home as this machine sees it
        return self.root / "home"

    @property
    def tmp(self) -> Path:      # the node's /tmp as this machine sees it
        return self.root / "tmp"

    def log(self) -> str:
        path = self.root / "sshd.log"
        return path.read_text(errors="replace").strip() if path.exists() else ""


class LoopbackNodes:
    """Nodes `{name: ip}` under `base`; `client_home` holds the key (~/.ssh/KEY_NAME) for `ray up`."""

    def __init__(self, base: Path, nodes: dict[str, str]):
        self.base = base
        self.home = base / "home"                       # every node's home, at this one path
        self.client_home = base / "client"
        self.key = self.client_home / ".ssh" / KEY_NAME
        self.nodes = {name: Node(name, ip, base / "nodes" / name) for name, ip in nodes.items()}

    # ---------------------------------------------------------------- start and stop

    def start(self) -> None:
        """Keys, each node's image, each node's sshd; NodesUnavailable when an sshd does not answer."""
        self.home.mkdir(parents=True)
        self.key.parent.mkdir(parents=True)
        _ssh_client_config(self.client_home)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.base / "host_key")], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.base / "authorized_keys")
        passwd = self.base / "passwd"
        passwd.write_text(_passwd(self.home))
        (self.base / "client.passwd").write_text(_passwd(self.client_home))
        (self.client_home / "tmp").mkdir()
        (self.client_home / "tmp").chmod(0o1777)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)     # sshd's privilege-separation directory
        for node in self.nodes.values():
            self._image(node)
            (node.root / "sshd_config").write_text(SSHD_CONFIG.format(
                ip=node.ip, port=SSH_PORT, host_key=self.base / "host_key",
                authorized_keys=self.base / "authorized_keys", root=node.root))
            script = NODE_INIT.format(passwd=passwd, root=node.root, home=self.home, name=node.name, sshd=SSHD)
            with open(node.root / "sshd.log", "wb") as log:
                node.process = subprocess.Popen(NAMESPACES + ["sh", "-c", script], stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=subprocess.STDOUT)
        for node in self.nodes.values():
            self._wait_for_sshd(node)

    def _image(self, node: Node) -> None:
        """The node's home: .bashrc, a venv over this interpreter's packages, `ray` in it."""
        node.tmp.mkdir(parents=True)
        node.tmp.chmod(0o1777)
        node.home.mkdir()
        (node.home / ".bashrc").write_text(BASHRC)
        _ssh_client_config(node.home)               # the head's autoscaler reaches the workers
        venv = node.home / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
        site_packages = next(venv.glob("lib/python3*/site-packages"))
        # this interpreter's own site directories too, in case it runs in a venv itself
        (site_packages / "test_machine_site.pth").write_text("".join(
            f"import site; site.addsitedir({path!r})\n" for path in _site_dirs()))
        ray = venv / "bin" / "ray"
        ray.write_text(RAY_COMMAND.format(python=self.home / "venv" / "bin" / "python3"))
        ray.chmod(0o755)

    def _wait_for_sshd(self, node: Node) -> None:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            if node.process.poll() is not None:
                raise NodesUnavailable(f"sshd of node {node.name} ({node.ip}) exited: "
                                       f"{node.log() or node.process.returncode}")
            try:
                socket.create_connection((node.ip, SSH_PORT), timeout=1).close()
                return
            except OSError as error:
                if time.time() > deadline:
                    raise NodesUnavailable(f"sshd of node {node.name} ({node.ip}) does not answer: {error}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """End every node: its sshd is PID 1 of the node's namespaces, so everything there dies with it."""
        for node in self.nodes.values():
            if node.process is None or node.process.poll() is not None:
                continue
            init = _child_pid(node.process.pid)
            if init is not None:
                os.kill(init, signal.SIGKILL)           # unshare, its parent, reaps it and exits
            else:
                node.process.terminate()                # --kill-child: SIGKILL to the node's PID 1
        for node in self.nodes.values():
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(timeout=10)

    def client(self, argv: list[str]) -> list[str]:
        """`argv` as run from the machine that types `ray up`: root's home is `client_home` (ssh
        reads ~ from /etc/passwd, not $HOME) and /tmp its own, in a mount namespace of its own."""
        init = CLIENT_INIT.format(passwd=self.base / "client.passwd", tmp=self.client_home / "tmp")
        return ["unshare", "--mount", "sh", "-c", init, "client", *argv]

    # ---------------------------------------------------------------- looking at a node

    def ssh(self, name: str, command: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """`command` on the node as root, in its login environment (~/.bashrc); output captured."""
        argv = ["ssh", "-i", str(self.key), "-p", str(SSH_PORT), *SSH_OPTIONS, f"root@{self.nodes[name].ip}",
                f"source ~/.bashrc; {command}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def processes(self, name: str) -> list[str]:
        """Command lines of the node's processes other than its sshd (its PID namespace's)."""
        node = self.nodes[name]
        init = _child_pid(node.process.pid) if node.process and node.process.poll() is None else None
        if init is None:
            return []
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == init:
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue                                # gone meanwhile
            if argv and not argv.startswith(SSHD) and not argv.startswith("sshd"):
                found.append(argv)
        return found


def _child_pid(pid: int) -> int | None:
    """unshare's child: the node's PID 1 (its sshd), as this machine numbers it."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def _ssh_client_config(home: Path) -> None:
    config = home / ".ssh" / "config"
    config.parent.mkdir(mode=0o700, exist_ok=True)
    config.write_text(SSH_CLIENT_CONFIG.format(port=SSH_PORT))
    config.chmod(0o600)


def _passwd(home: Path) -> str:
    """This machine's /etc/passwd with `home` as root's home directory."""
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines(keepends=True):
        fields = line.rstrip("\n").split(":")
        if fields[0] == "root" and len(fields) == 7:
            line = ":".join(fields[:5] + [str(home), fields[6]]) + "\n"
        lines.append(line)
    return "".join(lines)


def _site_dirs() -> list[str]:
    import site
    return [path for path in site.getsitepackages() if os.path.isdir(path)]
