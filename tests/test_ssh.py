"""RemoteHost against real sshd servers in network namespaces (tests/netns.py)."""

import os
import secrets
import socketserver
import sys
import threading
import time

import psutil
import pytest

try:
    from tests.netns import netns_hosts_fixture, processes_matching, wait_no_processes
except ImportError:  # tests/ itself on sys.path (no tests/__init__.py)
    from netns import netns_hosts_fixture, processes_matching, wait_no_processes

from scoop.launch.ssh import REMOTE_KILL_GRACE, REMOTE_TERM_GRACE, RemoteHost, SSHError, connect_hosts

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cluster = netns_hosts_fixture(3)

# Time for a remote process to die after its channel closes, with margin.
DEATH_TIMEOUT = REMOTE_TERM_GRACE + REMOTE_KILL_GRACE + 4


@pytest.fixture
def home(cluster, monkeypatch):
    """HOME with the cluster's ~/.ssh/config, and no ssh agent to fall back on."""
    monkeypatch.setenv("HOME", cluster.home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return cluster.home


@pytest.fixture
def marker():
    """A unique word to put in remote command lines; nothing may outlive the test."""
    mark = f"scoopmark-{secrets.token_hex(4)}"
    yield mark
    left = wait_no_processes(mark, DEATH_TIMEOUT)
    for proc in left:
        proc.kill()
    assert not left, f"processes left behind: {[p.pid for p in left]}"


@pytest.fixture
def hosts_to_close():
    opened = []
    yield opened
    for host in opened:
        host.close()


def connect(name, opened, **kw):
    kw.setdefault("connect_timeout", 5)
    host = RemoteHost(name, **kw)
    opened.append(host)
    return host.connect()


def collector():
    lines = {"stdout": [], "stderr": []}
    return lines, lambda stream, line: lines[stream].append(line)


def wait_started(marker, count=1, timeout=10.0):
    """Wait until ``count`` Python programs carrying ``marker`` run (not just their wrappers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for proc in processes_matching(marker):
            try:
                if proc.cmdline()[:1] == [PY]:  # empty while the wrapper execs it, or once a zombie
                    found.append(proc)
            except psutil.Error:
                pass
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} remote program(s) with {marker} did not start")


def ssh_connections_to(ips):
    """Our own established TCP connections to port 22 of ``ips``."""
    return [
        c for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.ip in ips and c.raddr.port == 22
        and c.status == psutil.CONN_ESTABLISHED
    ]


# ----------------------------------------------------------------- basics


def test_run_command_output_and_status(cluster, home, hosts_to_close, marker):
    host = connect("h1", hosts_to_close)
    lines, on_output = collector()
    code = "import sys; print('one'); print('two'); print('err', file=sys.stderr); sys.exit(3)"
    proc = host.start([PY, "-c", code, marker], on_output=on_output)
    assert proc.wait(15) == 3
    assert proc.returncode == 3 and proc.poll() == 3
    assert lines == {"stdout": ["one", "two"], "stderr": ["err"]}
    assert proc.host == "h1"


def test_config_path_instead_of_home(cluster, tmp_path, monkeypatch, hosts_to_close, marker):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh here
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    host = connect("h2", hosts_to_close, config_path=cluster.ssh_config)
    lines, on_output = collector()
    proc = host.start([PY, "-c", "import socket; print('up')", marker], on_output=on_output)
    assert proc.wait(15) == 0
    assert lines["stdout"] == ["up"]
    assert host.hostname == cluster["h2"].ip and host.user == "root" and host.port == 22


def test_default_output_goes_to_local_streams(cluster, home, hosts_to_close, marker, capfd):
    host = connect("h1", hosts_to_close)
    code = "import sys; print('to-out'); print('to-err', file=sys.stderr)"
    assert host.start([PY, "-c", code, marker]).wait(15) == 0
    out, err = capfd.readouterr()
    assert "to-out\n" in out and "to-err\n" in err


def test_cwd_env_prolog(cluster, home, hosts_to_close, marker, tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("export FROM_PROLOG='set by prolog'\n")
    host = connect("h1", hosts_to_close)
    lines, on_output = collector()
    code = "import os; print(os.getcwd()); print(os.environ['A']); print(os.environ['FROM_PROLOG'])"
    proc = host.start([PY, "-c", code, marker], cwd=str(workdir), prolog=str(prolog),
                      env={"A": "x y 'z' $HOME"}, on_output=on_output)
    assert proc.wait(15) == 0, lines
    assert lines["stdout"] == [str(workdir), "x y 'z' $HOME", "set by prolog"]


def test_missing_prolog_and_cwd_fail(cluster, home, hosts_to_close, marker, tmp_path):
    host = connect("h1", hosts_to_close)
    lines, on_output = collector()
    proc = host.start([PY, "-c", "pass", marker], prolog=str(tmp_path / "nope.sh"), on_output=on_output)
    assert proc.wait(15) == 125
    assert any("prolog" in line for line in lines["stderr"])
    proc = host.start([PY, "-c", "pass", marker], cwd=str(tmp_path / "nodir"))
    assert proc.wait(15) == 125


def test_stdin_data_and_stdin_kept_open(cluster, home, hosts_to_close, marker):
    host = connect("h1", hosts_to_close)
    lines, on_output = collector()
    code = (
        "import sys\n"
        "for line in sys.stdin:\n"
        "    print('got', line.strip(), flush=True)\n"
        "print('eof', flush=True)\n"
    )
    proc = host.start([PY, "-c", code, marker], stdin_data=b"secret-token\n", on_output=on_output)
    deadline = time.monotonic() + 10
    while not lines["stdout"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines["stdout"] == ["got secret-token"]
    time.sleep(0.5)
    assert proc.poll() is None  # stdin still open: no EOF yet
    proc.write_stdin(b"more\n")
    while len(lines["stdout"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines["stdout"] == ["got secret-token", "got more"]
    # The secret never appears on any command line.
    assert not processes_matching("secret-token")
    proc.kill()
    assert wait_no_processes(marker, DEATH_TIMEOUT) == []


def test_local_address_is_veth_ip(cluster, home, hosts_to_close):
    host = connect("h3", hosts_to_close)
    assert host.local_address == cluster.gateway_ip
    assert not host.jumped


# ------------------------------------------------------------ kill / close


def test_kill_ends_remote_process(cluster, home, hosts_to_close, marker):
    host = connect("h1", hosts_to_close)
    proc = host.start([PY, "-c", "import time; time.sleep(600)", marker])
    wait_started(marker)
    proc.kill()
    assert wait_no_processes(marker, DEATH_TIMEOUT) == []
    assert proc.wait(5) is not None


def test_kill_ends_process_ignoring_stdin_and_sigterm(cluster, home, hosts_to_close, marker):
    host = connect("h2", hosts_to_close)
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1] + '-child'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    lines, on_output = collector()
    proc = host.start([PY, "-c", code, marker], on_output=on_output)
    deadline = time.monotonic() + 10
    while not lines["stdout"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines["stdout"] == ["ready"]
    wait_started(marker + "-child")
    started = time.monotonic()
    proc.kill()
    assert wait_no_processes(marker, DEATH_TIMEOUT) == []
    assert time.monotonic() - started < DEATH_TIMEOUT


def test_close_ends_all_processes(cluster, home, marker):
    host = RemoteHost("h3", connect_timeout=5).connect()
    procs = [host.start([PY, "-c", "import time; time.sleep(600)", f"{marker}-{i}"]) for i in range(3)]
    wait_started(marker, 3)
    host.close()
    assert not host.connected
    assert wait_no_processes(marker, DEATH_TIMEOUT) == []
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(SSHError, match="^host 'h3': not connected"):
        host.start([PY, "-c", "pass"])


# -------------------------------------------------------------- ProxyJump


def test_proxy_jump(cluster, home, tmp_path, hosts_to_close, marker):
    config = cluster.write_config(
        str(tmp_path / "config"),
        cluster.config_entry("h2-via-h1", cluster["h2"].ip, ProxyJump="h1")
        + cluster.config_entry("h2-via-h1-h3", cluster["h2"].ip, ProxyJump="h1,h3")
        + cluster.config_entry("h3-via-h1-explicit", cluster["h3"].ip, ProxyJump="root@h1:22"),
    )
    code = "import os; print(os.environ['SSH_CONNECTION'].split()[0])"
    for alias, seen_from in (("h2-via-h1", "h1"), ("h2-via-h1-h3", "h3"), ("h3-via-h1-explicit", "h1")):
        host = connect(alias, hosts_to_close, config_path=config)
        assert host.jumped
        assert host.local_address == cluster.gateway_ip
        lines, on_output = collector()
        assert host.start([PY, "-c", code, marker], on_output=on_output).wait(15) == 0
        # sshd on h2 saw the connection coming from the last jump host.
        assert lines["stdout"] == [cluster[seen_from].ip]


def test_proxy_jump_failures_name_target(cluster, home, tmp_path, hosts_to_close):
    config = cluster.write_config(
        str(tmp_path / "config"),
        cluster.config_entry("dead-jump", cluster["h2"].ip, ProxyJump="nowhere")
        + cluster.config_entry("nowhere", cluster.unused_ip())
        + cluster.config_entry("dead-target", cluster.unused_ip(), ProxyJump="h1"),
    )
    with pytest.raises(SSHError) as err:
        connect("dead-jump", hosts_to_close, config_path=config, connect_timeout=2)
    assert str(err.value).startswith("host 'dead-jump': via jump host 'nowhere': unreachable")
    with pytest.raises(SSHError) as err:
        connect("dead-target", hosts_to_close, config_path=config, connect_timeout=2)
    assert str(err.value).startswith("host 'dead-target': unreachable via jump host 'h1'")


# ------------------------------------------------------ host keys and auth


def test_unknown_host_key(cluster, home, tmp_path, hosts_to_close):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = cluster.write_config(
        str(tmp_path / "config"),
        cluster.config_entry("stranger", cluster["h1"].ip, UserKnownHostsFile=str(empty)),
    )
    with pytest.raises(SSHError) as err:
        connect("stranger", hosts_to_close, config_path=config)
    assert str(err.value).startswith("host 'stranger': unknown host key")
    assert empty.read_text() == ""


def test_accept_new_and_no(cluster, home, tmp_path, hosts_to_close):
    learned = tmp_path / "learned"
    ignored = tmp_path / "ignored"
    config = cluster.write_config(
        str(tmp_path / "config"),
        cluster.config_entry("tofu", cluster["h1"].ip, UserKnownHostsFile=str(learned),
                             StrictHostKeyChecking="accept-new")
        + cluster.config_entry("trusting", cluster["h1"].ip, UserKnownHostsFile=str(ignored),
                               StrictHostKeyChecking="no")
        + cluster.config_entry("strict", cluster["h1"].ip, UserKnownHostsFile=str(learned)),
    )
    connect("tofu", hosts_to_close, config_path=config)
    assert learned.read_text().split() == [cluster["h1"].ip, *cluster["h1"].host_pubkey.split()]
    connect("strict", hosts_to_close, config_path=config)  # now known
    connect("trusting", hosts_to_close, config_path=config)
    assert not ignored.exists()


def test_changed_host_key_refused(cluster, home, tmp_path, hosts_to_close):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{cluster['h1'].ip} {cluster['h2'].host_pubkey}\n")
    config = cluster.write_config(
        str(tmp_path / "config"),
        cluster.config_entry("spoofed", cluster["h1"].ip, UserKnownHostsFile=str(wrong),
                             StrictHostKeyChecking="no"),
    )
    with pytest.raises(SSHError, match="^host 'spoofed': host key mismatch"):
        connect("spoofed", hosts_to_close, config_path=config)


def test_wrong_identity_refused(cluster, home, tmp_path, hosts_to_close):
    import subprocess

    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = cluster.write_config(
        str(tmp_path / "config"),
        cluster.config_entry("badkey", cluster["h1"].ip, IdentityFile=str(key)),
    )
    with pytest.raises(SSHError) as err:
        connect("badkey", hosts_to_close, config_path=config)
    assert str(err.value).startswith("host 'badkey': auth failed for user 'root'")


# ------------------------------------------------------- unreachable hosts


def test_unreachable_address_fails_fast(cluster, home, tmp_path, hosts_to_close):
    config = cluster.write_config(
        str(tmp_path / "config"), cluster.config_entry("ghost", cluster.unused_ip()))
    started = time.monotonic()
    with pytest.raises(SSHError) as err:
        connect("ghost", hosts_to_close, config_path=config, connect_timeout=3)
    assert time.monotonic() - started < 5
    assert str(err.value).startswith("host 'ghost': unreachable")


def test_connection_refused(cluster, home, tmp_path, hosts_to_close):
    config = cluster.write_config(
        str(tmp_path / "config"), cluster.config_entry("closedport", cluster["h1"].ip, Port="2222"))
    with pytest.raises(SSHError, match="^host 'closedport': connection refused"):
        connect("closedport", hosts_to_close, config_path=config, connect_timeout=3)


def test_cut_link(cluster, home, hosts_to_close, marker):
    host = connect("h3", hosts_to_close)
    host.start([PY, "-c", "import time; time.sleep(600)", marker])
    wait_started(marker)
    assert host.alive(2)
    cluster.cut_link("h3")
    try:
        started = time.monotonic()
        assert not host.alive(1.5)  # the silent host is noticed
        with pytest.raises(SSHError) as err:
            connect("h3", hosts_to_close, connect_timeout=3)
        assert time.monotonic() - started < 6
        assert str(err.value).startswith("host 'h3': unreachable")
        started = time.monotonic()
        host.close()  # must not hang on the dead link
        assert time.monotonic() - started < 3
        assert not host.alive(1)
        # sshd drops the silent client (~7 s with the test ClientAlive
        # settings); the session's stdin then closes and the program ends.
        assert wait_no_processes(marker, 10 + DEATH_TIMEOUT) == []
    finally:
        cluster.restore_link("h3")
    assert connect("h3", hosts_to_close).alive(2)  # reachable again


# --------------------------------------------------------------- python


def test_check_python(cluster, home, hosts_to_close):
    host = connect("h2", hosts_to_close)
    host.check_python(PY)
    with pytest.raises(SSHError) as err:
        host.check_python("/nonexistent/python3.99")
    assert str(err.value).startswith("host 'h2': python interpreter '/nonexistent/python3.99' not found")
    with pytest.raises(SSHError, match="^host 'h2': python interpreter '/bin/false' failed"):
        host.check_python("/bin/false")


def test_agent_says_ready_then_leaves_quietly_without_workers(cluster, home, hosts_to_close, marker):
    """A host's agent starts before the broker: it says ``ready`` once it imported what a worker
    needs, and a launcher that stops before giving it workers ends it without a word."""
    host = connect("h1", hosts_to_close)
    lines, on_output = collector()
    proc = host.start([PY, "-m", "scoop.launch.ssh_agent", marker], on_output=on_output,
                      env={"PYTHONPATH": ROOT})
    deadline = time.monotonic() + 30
    while not lines["stdout"] and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lines["stdout"] == ["ready %d.%d" % sys.version_info[:2]], lines
    proc.channel.shutdown_write()  # the end of its stdin, before any configuration
    assert proc.wait(10) == 0
    assert lines["stderr"] == []


def test_launch_names_every_host_whose_agent_cannot_start(cluster, home, marker, tmp_path):
    """The agent's start is the check of each host's Python and prolog: every host that fails
    is named with its reason, and nothing is left on any host."""
    from scoop.cluster import Cluster
    from scoop.errors import ClusterError

    bad = f"/nonexistent/{marker}/python3"
    with pytest.raises(ClusterError) as err:
        Cluster(hosts=["h1", "h2"], python=bad).start(timeout=60)
    for name in ("h1", "h2"):
        assert f"host '{name}': python interpreter '{bad}' not found" in str(err.value)
    prolog = tmp_path / f"{marker}.sh"  # there is none
    with pytest.raises(ClusterError) as err:
        Cluster(hosts=["h3"], prolog=str(prolog)).start(timeout=60)
    assert str(err.value).startswith("host 'h3': cannot start in ")
    assert f"--prolog {str(prolog)!r} was sourced first" in str(err.value)
    assert "cannot read prolog" in str(err.value)


# ------------------------------------------------------ reverse tunnels


class _Echo(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(self.server.prefix + data)


@pytest.fixture
def echo_servers():
    servers = []

    def make(prefix):
        server = _Echo(("127.0.0.1", 0), _EchoHandler)
        server.prefix = prefix
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def test_forward_remote_port(cluster, home, hosts_to_close, echo_servers):
    host = connect("h1", hosts_to_close)
    port_a = echo_servers(b"A:")
    port_b = echo_servers(b"B:")
    remote_a = host.forward_remote_port("127.0.0.1", port_a)
    remote_b = host.forward_remote_port("127.0.0.1", port_b)
    assert remote_a != remote_b
    client = (
        "import socket, sys\n"
        "for port in sys.argv[1:]:\n"
        "    s = socket.create_connection(('127.0.0.1', int(port)), timeout=5)\n"
        "    s.sendall(b'ping')\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "    data = b''\n"
        "    while True:\n"
        "        chunk = s.recv(100)\n"
        "        if not chunk: break\n"
        "        data += chunk\n"
        "    print(data.decode())\n"
    )
    # Connect from inside h1's namespace, where 127.0.0.1 is h1's loopback.
    done = cluster["h1"].run([PY, "-c", client, str(remote_a), str(remote_b), str(remote_a)],
                             capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["A:ping", "B:ping", "A:ping"]


# -------------------------------------------------------- connect_hosts


def test_connect_hosts_parallel(cluster, home):
    hosts = connect_hosts(["h1", "h2", "h1", "h3"], connect_timeout=5)
    try:
        assert list(hosts) == ["h1", "h2", "h3"]
        assert all(h.connected for h in hosts.values())
    finally:
        for h in hosts.values():
            h.close()


def test_connect_hosts_reports_every_failure(cluster, home, tmp_path):
    config = cluster.write_config(
        str(tmp_path / "config"),
        cluster.config_entry("ghost1", cluster.unused_ip())
        + cluster.config_entry("ghost2", str(cluster.subnet.network_address + 251)),
    )
    ips = {cluster["h1"].ip, cluster["h2"].ip}
    assert ssh_connections_to(ips) == []
    started = time.monotonic()
    with pytest.raises(SSHError) as err:
        connect_hosts(["h1", "ghost1", "h2", "ghost2"], config_path=config, connect_timeout=3)
    assert time.monotonic() - started < 5  # in parallel: one timeout, not two
    message = str(err.value)
    assert message.startswith("host 'ghost1': unreachable")
    assert "host 'ghost2': unreachable" in message
    assert "'h1'" not in message and "'h2'" not in message
    assert set(err.value.failures) == {"ghost1", "ghost2"}
    # The good connections were closed again.
    deadline = time.monotonic() + 5
    while ssh_connections_to(ips) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ssh_connections_to(ips) == []
