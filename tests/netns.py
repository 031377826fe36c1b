"""Real SSH test hosts: Linux network namespaces, each running its own sshd.

Why: SSH launching can only be trusted when tested against a real OpenSSH
server on a separate network stack -- real host keys, real auth failures,
real unreachable addresses and link cuts.  Namespaces give that on one
machine without containers: they share the filesystem (so the same Python
and checkout exist on every "host") and the pid namespace (so psutil sees
remote processes, which lets tests prove that nothing was left behind).

Topology: one bridge in the root namespace holding ``10.213.S.1/24``; host
``hK`` is a namespace with ``eth0 = 10.213.S.(10+K)/24`` joined to the
bridge by a veth pair.  Hosts reach each other (for ProxyJump tests) and the
root namespace, and nothing else: no default route, and every address used
is inside 10.213.0.0/16.  ``S`` is random and checked against addresses in
use, and every name carries ``scooptest-<random>``, so parallel runs do not
collide.

Usage::

    from tests.netns import netns_hosts_fixture
    cluster = netns_hosts_fixture(3)          # module-scoped pytest fixture

    def test_x(cluster, monkeypatch):
        monkeypatch.setenv("HOME", cluster.home)   # ~/.ssh/config has h1, h2, h3
        ...

or ``with NetnsCluster(2) as cluster: ...`` outside pytest.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import psutil

SSHD = "/usr/sbin/sshd"
SUBNET_BASE = ipaddress.ip_network("10.213.0.0/16")


def skip_reason(sshd: bool = True) -> Optional[str]:
    """Why namespace hosts cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespace test hosts need root"
    if not shutil.which("ip"):
        return "'ip' (iproute2) is not installed"
    if not sshd:
        return None
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} (openssh-server) is not installed"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen (openssh-client) is not installed"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


_STALE_NETNS = re.compile(r"^scooptest-([0-9a-f]{6})-p(\d+)-h\d+$")


def sweep_stale() -> None:
    """Remove test hosts left by runs that were killed before cleaning up.

    Namespace names carry the creating pid, so only hosts whose creator is
    gone are touched; parallel live runs are left alone.
    """
    out = _run("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _STALE_NETNS.match(name)
        if not m or psutil.pid_exists(int(m.group(2))):
            continue
        tag = m.group(1)
        for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "del", name, check=False)  # also removes its veth pair
        _run("ip", "link", "del", f"scb{tag}", check=False)
        for entry in glob.glob(os.path.join(tempfile.gettempdir(), f"scooptest-{tag}-*")):
            shutil.rmtree(entry, ignore_errors=True)


def processes_matching(pattern: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``pattern``.

    Namespaces share the pid namespace, so this finds processes started on
    any test host -- the way tests check that a remote kill really killed.
    """
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = proc.info["cmdline"] or []
        if any(pattern in arg for arg in cmdline):
            found.append(proc)
    return found


def wait_no_processes(pattern: str, timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until no process matches ``pattern``; return the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_matching(pattern)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@dataclass
class TestHost:
    """One namespace host.  ``name`` is its ssh alias (h1, h2, ...)."""

    __test__ = False  # not a pytest test class

    name: str
    netns: str
    ip: str
    veth: str  # root-namespace end, a port of the bridge
    dir: str
    host_pubkey: str = ""
    sshd: Optional[subprocess.Popen] = field(default=None, repr=False)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Run a command inside this host's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], **kw)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], **kw)

    def nsenter(self, argv: list[str]) -> list[str]:
        """``argv`` run in this host's network namespace only.  Unlike ``ip netns exec``,
        nsenter does not remount /sys, so /sys/fs/cgroup stays visible (slurmd needs it)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]


class NetnsCluster:
    """N namespace hosts with sshd, plus a HOME whose ~/.ssh/config names them.

    ``sshd=False`` makes bare hosts (no keys, no sshd) for daemons the caller starts itself;
    ``names`` replaces the aliases h1..hN (the namespaces keep their ``-hK`` suffix).
    """

    def __init__(self, n: int = 2, sshd: bool = True, names: Optional[list[str]] = None):
        self.n = n
        self.with_sshd = sshd
        self.names = list(names) if names else [f"h{k}" for k in range(1, n + 1)]
        if len(self.names) != n:
            raise ValueError(f"{n} hosts but {len(self.names)} names")
        self.tag = secrets.token_hex(3)
        self.prefix = f"scooptest-{self.tag}"
        self.bridge = f"scb{self.tag}"
        self.hosts: list[TestHost] = []
        self.by_name: dict[str, TestHost] = {}
        self.tmp = ""
        self.home = ""
        self.ssh_dir = ""
        self.ssh_config = ""
        self.client_key = ""
        self.known_hosts = ""
        self.gateway_ip = ""
        self.subnet: Optional[ipaddress.IPv4Network] = None
        self._bridge_made = False
        self._netns_made: list[str] = []
        self._veths_made: list[str] = []

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> "NetnsCluster":
        try:
            self._setup()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        used = []
        out = _run("ip", "-o", "-4", "addr", "show").stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
        candidates = list(range(1, 255))
        random.shuffle(candidates)
        for third in candidates:
            net = ipaddress.ip_network(f"10.213.{third}.0/24")
            if not any(net.overlaps(u) for u in used):
                return net
        raise RuntimeError("no free 10.213.x.0/24 subnet for test hosts")

    def _setup(self) -> None:
        sweep_stale()
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        os.chmod(self.tmp, 0o755)
        self.home = os.path.join(self.tmp, "home")
        self.ssh_dir = os.path.join(self.home, ".ssh")
        os.makedirs(self.ssh_dir, mode=0o700)
        # sshd's privilege separation needs this; packages create it at boot.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

        authorized = os.path.join(self.tmp, "authorized_keys")
        if self.with_sshd:
            # A non-default key name, so paramiko's look_for_keys cannot find it
            # by accident in tests that expect a refused key.
            self.client_key = os.path.join(self.ssh_dir, "scoop_test_key")
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.prefix, "-f", self.client_key)
            shutil.copy(self.client_key + ".pub", authorized)

        self.subnet = self._pick_subnet()
        base = self.subnet.network_address
        self.gateway_ip = str(base + 1)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        _run("ip", "addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

        for k in range(1, self.n + 1):
            host = TestHost(
                name=self.names[k - 1],
                netns=f"{self.prefix}-p{os.getpid()}-h{k}",
                ip=str(base + 10 + k),
                veth=f"sct{self.tag}{k}",
                dir=os.path.join(self.tmp, self.names[k - 1]),
            )
            os.makedirs(host.dir)
            self._make_host(host, authorized)
            self.hosts.append(host)
            self.by_name[host.name] = host
        if not self.with_sshd:
            return

        self.known_hosts = os.path.join(self.ssh_dir, "known_hosts_scoop")
        with open(self.known_hosts, "w") as f:
            for host in self.hosts:
                f.write(f"{host.ip} {host.host_pubkey}\n")
        self.ssh_config = os.path.join(self.ssh_dir, "config")
        with open(self.ssh_config, "w") as f:
            for host in self.hosts:
                f.write(self.config_entry(host.name, host.ip))
        for host in self.hosts:
            self._wait_sshd(host)

    def _make_host(self, host: TestHost, authorized: str) -> None:
        peer = f"scp{self.tag}{host.veth[len(f'sct{self.tag}'):]}"
        _run("ip", "netns", "add", host.netns)
        self._netns_made.append(host.netns)
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer)
        self._veths_made.append(host.veth)
        _run("ip", "link", "set", peer, "netns", host.netns)
        _run("ip", "link", "set", host.veth, "master", self.bridge)
        _run("ip", "link", "set", host.veth, "up")
        inside = ["ip", "netns", "exec", host.netns]
        _run(*inside, "ip", "link", "set", peer, "name", "eth0")
        _run(*inside, "ip", "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        if not self.with_sshd:
            return

        hostkey = os.path.join(host.dir, "ssh_host_ed25519_key")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", hostkey)
        with open(hostkey + ".pub") as f:
            host.host_pubkey = " ".join(f.read().split()[:2])
        config = os.path.join(host.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"ListenAddress {host.ip}\n"
                "Port 22\n"
                f"HostKey {hostkey}\n"
                f"PidFile {os.path.join(host.dir, 'sshd.pid')}\n"
                f"AuthorizedKeysFile {authorized}\n"
                "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "AllowTcpForwarding yes\n"
                "GatewayPorts no\n"
                "X11Forwarding no\n"
                "PrintMotd no\n"
                # Drop dead clients fast, so a cut link ends remote sessions:
                # sshd gives up on a silent client about 7 s after a cut.
                "ClientAliveInterval 1\n"
                "ClientAliveCountMax 3\n"
                "MaxStartups 100:30:200\n"
                "MaxSessions 100\n"
                "LogLevel VERBOSE\n"
            )
        log = open(os.path.join(host.dir, "sshd.log"), "wb")
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, SSHD, "-D", "-e", "-f", config],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def _wait_sshd(self, host: TestHost, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.sshd.poll() is not None:
                raise RuntimeError(f"sshd for {host.name} exited: {self.sshd_log(host)}")
            try:
                with socket.create_connection((host.ip, 22), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sshd for {host.name} not answering on {host.ip}:22: {self.sshd_log(host)}")

    def sshd_log(self, host) -> str:
        host = self._host(host)
        try:
            with open(os.path.join(host.dir, "sshd.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Remove everything made, tolerating a half-made setup."""
        for host in self.hosts:
            if host.sshd is not None and host.sshd.poll() is None:
                host.sshd.terminate()
                try:
                    host.sshd.wait(5)
                except subprocess.TimeoutExpired:
                    host.sshd.kill()
                    host.sshd.wait(5)
        for ns in self._netns_made:
            # Whatever still runs in the namespace (sessions, test programs).
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for veth in self._veths_made:
            _run("ip", "link", "del", veth, check=False)
        for ns in self._netns_made:
            _run("ip", "netns", "del", ns, check=False)
        if self._bridge_made:
            _run("ip", "link", "del", self.bridge, check=False)
        self._netns_made, self._veths_made, self._bridge_made = [], [], False
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers for tests -----------------------------------------------

    def _host(self, host) -> TestHost:
        return host if isinstance(host, TestHost) else self.by_name[host]

    def __getitem__(self, name: str) -> TestHost:
        return self.by_name[name]

    def config_entry(self, alias: str, hostname: str, **extra: str) -> str:
        """A ``Host`` block like the ones for h1..hN; ``extra`` adds options."""
        opts = {
            "HostName": hostname,
            "User": "root",
            "IdentityFile": self.client_key,
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": os.path.join(self.ssh_dir, "known_hosts_scoop"),
            "StrictHostKeyChecking": "yes",
        }
        opts.update(extra)
        lines = [f"Host {alias}"] + [f"    {k} {v}" for k, v in opts.items() if v is not None]
        return "\n".join(lines) + "\n\n"

    def write_config(self, path: str, text: str, include_hosts: bool = True) -> str:
        """Write an ssh config file: extra ``text`` first, then h1..hN."""
        with open(path, "w") as f:
            f.write(text)
            if include_hosts:
                for host in self.hosts:
                    f.write(self.config_entry(host.name, host.ip))
        return path

    def unused_ip(self) -> str:
        """An address on the test subnet where no host answers."""
        return str(self.subnet.network_address + 250)

    def cut_link(self, host) -> None:
        """Take the host off the network (its bridge port down): a cable cut."""
        _run("ip", "link", "set", self._host(host).veth, "down")

    def restore_link(self, host) -> None:
        _run("ip", "link", "set", self._host(host).veth, "up")

    def sessions(self, host) -> list[psutil.Process]:
        """sshd processes serving connections on ``host`` (children of its sshd)."""
        host = self._host(host)
        try:
            return psutil.Process(host.sshd.pid).children()
        except (psutil.NoSuchProcess, AttributeError):
            return []


def netns_hosts_fixture(n: int = 2, scope: str = "module"):
    """Make a pytest fixture yielding a :class:`NetnsCluster` of ``n`` hosts.

    Skips (with the reason) where namespaces or sshd are unavailable, and
    always tears the hosts down, whatever the tests did.
    """
    import pytest

    @pytest.fixture(scope=scope)
    def _cluster():
        reason = skip_reason()
        if reason:
            pytest.skip(reason)
        cluster = NetnsCluster(n)
        try:
            cluster.__enter__()
        except RuntimeError as e:
            if "Operation not permitted" in str(e):
                pytest.skip(f"cannot create network namespaces here: {e}")
            raise
        try:
            yield cluster
        finally:
            cluster.cleanup()

    return _cluster


def restore_env(old: dict) -> None:
    """Puts back the environment variables a test cluster's ``activate`` changed (None: unset)."""
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    old.clear()


def cluster_fixture(make, skip_reason, scope: str = "session"):
    """A pytest fixture yielding a running, activated test cluster made by ``make()`` (a batch
    system's daemons here and on nodes in namespaces); skips with the reason where one cannot be
    made, and always removes it."""
    import pytest

    @pytest.fixture(scope=scope)
    def _cluster():
        reason = skip_reason()
        if reason:
            pytest.skip(reason)
        sc = make()
        try:
            sc.__enter__()
        except RuntimeError as e:
            if "Operation not permitted" in str(e):
                pytest.skip(f"cannot create network namespaces here: {e}")
            raise
        try:
            sc.activate()
            yield sc
        finally:
            sc.cleanup()

    return _cluster


def daemons_skip_reason(what: str, packages: str, binaries, clients) -> Optional[str]:
    """Why a test batch cluster (``what``: its daemons here, nodes in namespaces) cannot be made
    here, or None: the namespace hosts' own reason, or the missing binaries and the Debian
    ``packages`` that bring them."""
    reason = skip_reason(sshd=False)
    if reason:
        return reason
    missing = [path for path in binaries if not os.access(path, os.X_OK)]
    missing += [c for c in clients if not shutil.which(c)]
    if missing:
        return (f"{what} needs Debian's {packages} (scripts/test.sh installs them as root); "
                f"missing: {', '.join(missing)}")
    if not shutil.which("nsenter") or not shutil.which("unshare"):
        return "nsenter/unshare (util-linux) are not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def sweep_stale_dirs(kind: str, kill) -> None:
    """Removes the directories ``scooptest-XXXXXX-<kind>-p<pid>`` of test clusters whose creating
    process is gone, after ``kill(directory)`` ended what still runs from them; then stale hosts."""
    pattern = re.compile(rf"^scooptest-[0-9a-f]{{6}}-{re.escape(kind)}-p(\d+)$")
    for entry in glob.glob(os.path.join(tempfile.gettempdir(), f"scooptest-*-{kind}-p*")):
        m = pattern.match(os.path.basename(entry))
        if not m or psutil.pid_exists(int(m.group(1))):
            continue
        kill(entry)
        shutil.rmtree(entry, ignore_errors=True)
    sweep_stale()
