"""Stand-ins for PBS's qsub/qstat/qdel and LSF's bsub/bjobs/bkill that really run the job.

Why: no PBS or LSF can be installed here, so the launchers are tested against what those commands
print, as their documentation shows it (PBS Professional Reference Guide: qsub, qstat -f, qdel;
IBM Spectrum LSF Command Reference: bsub, bjobs -o, bkill): job ids, states, errors.  The job
script itself runs as a local process in its own session, with its directives' output file, so a
SCOOP cluster really starts; qdel/bkill end that session.  State lives in ``$FAKEBATCH_DIR``
(one JSON file per job).  ``fakebatch.py release ID`` starts a job submitted held (``-h``/``-H``).

An LSF job gets the variables LSF sets in a job (``LSB_JOBID``, ``LSB_MCPU_HOSTS`` "host slots",
``LSB_HOSTS``), and ``blaunch [-n] HOST COMMAND...`` inside it starts a task of the job as the
real one does (a drop-in for rsh: stdin forwarded unless ``-n``, nothing printed of its own on
success): on an allocated host only, tracked by the job and ended with it.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

STATE = os.environ.get("FAKEBATCH_DIR", "/tmp/fakebatch")
SERVER = "pbsserver"
BAD_QUEUE = "no_such_queue"


def _path(jid):
    return os.path.join(STATE, "jobs", f"{jid.split('.')[0]}.json")


def _load(jid):
    try:
        with open(_path(jid)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save(job):
    tmp = _path(job["id"]) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(job, f)
    os.replace(tmp, _path(job["id"]))


def _next_id():
    path = os.path.join(STATE, "counter")
    try:
        with open(path) as f:
            n = int(f.read()) + 1
    except (OSError, ValueError):
        n = 1000
    with open(path, "w") as f:
        f.write(str(n))
    return n


def _directives(text, prefix):
    """Options from the script's header (the lines after #! that start with the prefix)."""
    args = []
    for line in text.splitlines()[1:]:
        if line.startswith(prefix + " "):
            args += shlex.split(line[len(prefix) + 1:])
        elif line.strip() and not line.startswith("#"):
            break
    return args


def _opts(args, with_value):
    out, rest, i = {}, [], 0
    while i < len(args):
        a = args[i]
        if a in with_value and i + 1 < len(args):
            out.setdefault(a, []).append(args[i + 1])
            i += 2
        else:
            out.setdefault(a, []).append(True) if a.startswith("-") else rest.append(a)
            i += 1
    return out, rest


def _seconds(text):
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def submit(system, argv, script_text, script_path):
    os.makedirs(os.path.join(STATE, "jobs"), exist_ok=True)
    if system == "pbs":
        opts, _ = _opts(_directives(script_text, "#PBS") + argv, {"-o", "-N", "-q", "-l", "-A", "-j"})
        queue = (opts.get("-q") or ["workq"])[-1]
        if queue == BAD_QUEUE:
            sys.stderr.write("qsub: Unknown queue\n")
            return 170
        n = _next_id()
        jid = f"{n}.{SERVER}"
        limits = [v.split("=", 1)[1] for v in opts.get("-l", []) if v.startswith("walltime=")]
        walltime = _seconds(limits[-1]) if limits else None
        hold, name = "-h" in opts, (opts.get("-N") or ["STDIN"])[-1]
        print(jid)
        slots = 1
    else:
        valued = {"-o", "-J", "-q", "-W", "-n", "-R", "-P", "-M", "-cwd", "-gpu"}
        opts, _ = _opts(_directives(script_text, "#BSUB") + argv, valued)
        queue = (opts.get("-q") or ["normal"])[-1]
        if queue == BAD_QUEUE:
            sys.stdout.write(f"{BAD_QUEUE}: No such queue. Job not submitted.\n")
            return 255
        n = _next_id()
        jid = str(n)
        w = (opts.get("-W") or [None])[-1]
        walltime = _seconds(w + ":00") if w else None
        hold, name = "-H" in opts, (opts.get("-J") or ["NONAME"])[-1]
        slots = int((opts.get("-n") or ["1"])[-1])
        where = "default queue" if "-q" not in opts else "queue"
        print(f"Job <{jid}> is submitted to {where} <{queue}>.")
    script = os.path.join(STATE, "jobs", f"{n}.sh")
    with open(script, "w") as f:
        f.write(script_text)
    job = {"id": jid, "system": system, "name": name, "queue": queue, "state": "held" if hold else "queued",
           "script": script, "out": (opts.get("-o") or [os.path.join(os.getcwd(), f"{name}.o{n}")])[-1],
           "cwd": os.getcwd(), "walltime": walltime, "submitted": time.time(), "exit": None,
           "env": dict(os.environ), "argv": argv, "submitted_script": script_path, "slots": slots}
    _save(job)
    if not hold:
        _start(job)
    return 0


def _start(job):
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "run", job["id"]], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while _load(job["id"])["state"] == "queued" and time.time() < deadline:
        time.sleep(0.02)


def run(jid):
    """The job: its script in a session of its own, ended by qdel/bkill or its walltime."""
    job = _load(jid)
    env = dict(job["env"])
    if job["system"] == "pbs":
        env.update(PBS_JOBID=jid, PBS_JOBNAME=job["name"], PBS_O_WORKDIR=job["cwd"], PBS_QUEUE=job["queue"])
    else:
        host = socket.gethostname()
        env.update(LSB_JOBID=jid, LSB_JOBNAME=job["name"], LSB_QUEUE=job["queue"],
                   LSB_MCPU_HOSTS=f"{host} {job['slots']}", LSB_HOSTS=" ".join([host] * job["slots"]))
    with open(job["out"], "ab") as out:
        proc = subprocess.Popen(["/bin/sh", job["script"]], cwd=job["cwd"], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    job.update(state="running", pgid=proc.pid, started=time.time(), host=socket.gethostname())
    _save(job)
    killed = None
    while True:
        try:
            code = proc.wait(0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        job_now = _load(jid)
        if job_now.get("kill") and killed is None:
            killed = "kill"
        elif job["walltime"] and time.time() > job["started"] + job["walltime"] and killed is None:
            killed = "walltime"
        if killed:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:  # what the script started in its session ends with it, as under a real scheduler
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in _tasks(jid):  # and so do its blaunch tasks, which LSF tracks wherever they run
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job = _load(jid)
    job.update(state="finished", exit=code if code >= 0 else 256 - code,  # PBS: 256 + signal
               ended=time.time(), killed=killed)
    _save(job)


def _tasks(jid):
    try:
        with open(_path(jid)[:-5] + ".tasks") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def blaunch(argv):
    """``blaunch [-n] HOST COMMAND...``: COMMAND as a task of the job this runs in."""
    no_stdin = argv[:1] == ["-n"]
    argv = argv[1:] if no_stdin else argv
    jid = os.environ.get("LSB_JOBID")
    if not jid or _load(jid) is None:
        sys.stderr.write("blaunch: not running inside an LSF job\n")
        return 255
    words = os.environ.get("LSB_MCPU_HOSTS", "").split()
    if len(argv) < 2 or argv[0] not in words[::2]:
        sys.stderr.write(f"blaunch: {argv[0] if argv else ''}: host is not allocated to the job\n")
        return 255
    with open(_path(jid)[:-5] + ".tasks", "a") as f:
        f.write(f"{os.getpid()}\n")  # exec keeps the pid: the task is this process
    if no_stdin:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.execvp(argv[1], argv[1:])


def _all():
    d = os.path.join(STATE, "jobs")
    jobs = []
    for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if entry.endswith(".json"):
            job = _load(entry[:-5])
            if job:
                jobs.append(job)
    return jobs


PBS_STATE = {"queued": "Q", "held": "H", "running": "R"}
LSF_STATE = {"queued": "PEND", "held": "PSUSP", "running": "RUN"}


def qstat(argv):
    full = "-f" in argv
    ids = [a for a in argv if not a.startswith("-")]
    code = 0
    jobs = [_load(i) for i in ids] if ids else [j for j in _all() if j["system"] == "pbs"]
    if not full:
        print("Job id            Name             User              Time Use S Queue")
        print("----------------  ---------------- ----------------  -------- - -----")
    for want, job in zip(ids or [j["id"] for j in jobs], jobs):
        if job is None or job["system"] != "pbs":
            sys.stderr.write(f"qstat: Unknown Job Id {want}\n")
            code = 153
            continue
        if job["state"] == "finished":
            if ids:
                sys.stderr.write(f"qstat: {job['id']} Job has finished, use -x or -H to obtain "
                                 "historical job information\n")
                code = 35
            continue
        s = PBS_STATE[job["state"]]
        if full:
            print(f"Job Id: {job['id']}")
            print(f"    Job_Name = {job['name']}")
            print(f"    Job_Owner = {os.environ.get('USER', 'root')}@{socket.gethostname()}")
            print(f"    job_state = {s}")
            print(f"    queue = {job['queue']}")
            print(f"    server = {SERVER}")
            if s == "R":
                print(f"    exec_host = {job['host']}/0*1")
            elif s == "H":
                print("    comment = Job held by user")
            else:
                print("    comment = Not Running: Insufficient amount of resource: ncpus")
            print()
        else:
            print(f"{job['id']:<17} {job['name'][:16]:<16} {'root':<16}  00:00:00 {s} {job['queue']}")
    return code


def _kill(system, ids):
    code = 0
    for want in ids:
        job = _load(want)
        if job is None or job["system"] != system:
            if system == "pbs":
                sys.stderr.write(f"qdel: Unknown Job Id {want}\n")
            else:
                sys.stderr.write(f"Job <{want}>: No matching job found\n")
            code = 153 if system == "pbs" else 255
            continue
        if job["state"] == "finished":
            if system == "pbs":
                sys.stderr.write(f"qdel: Job has finished {want}\n")
                code = 35
            else:
                sys.stderr.write(f"Job <{want}>: Job has already finished\n")
                code = 255
            continue
        if system == "lsf":
            print(f"Job <{want}> is being terminated")
        if job["state"] in ("queued", "held"):
            job.update(state="finished", exit=271, ended=time.time(), killed="kill")
        else:
            job["kill"] = True
        _save(job)
    return code


def bjobs(argv):
    fmt = argv[argv.index("-o") + 1] if "-o" in argv else None
    ids = [a for a in argv if not a.startswith("-") and a != fmt]
    code = 0
    for want in ids:
        job = _load(want)
        if job is None or job["system"] != "lsf":
            sys.stderr.write(f"Job <{want}> is not found\n")
            code = 255
            continue
        if job["state"] == "finished":
            state = "DONE" if job["exit"] == 0 else "EXIT"
        else:
            state = LSF_STATE[job["state"]]
        host = f"1*{job['host']}" if state == "RUN" else "-"
        reasons = {"PEND": "New job is waiting for scheduling;", "PSUSP": "The job was suspended by user;"}
        reason = reasons.get(state, "-")
        print("|".join([job["id"], state, host, reason]) if fmt else f"{job['id']} root {state}")
    return code


def main():
    tool, argv = os.path.basename(sys.argv[1]), sys.argv[2:]
    if tool == "run":
        return run(argv[0])
    if tool == "release":
        job = _load(argv[0])
        job["state"] = "queued"
        _save(job)
        _start(job)
        return 0
    if tool == "qsub":
        path = [a for a in argv if not a.startswith("-")][-1]
        with open(path) as f:
            return submit("pbs", argv[:-1], f.read(), path)
    if tool == "bsub":
        return submit("lsf", argv, sys.stdin.read(), None)
    if tool == "qstat":
        return qstat(argv)
    if tool in ("qdel", "bkill"):
        return _kill("pbs" if tool == "qdel" else "lsf", argv)
    if tool == "bjobs":
        return bjobs(argv)
    if tool == "blaunch":
        return blaunch(argv)
    sys.stderr.write(f"fakebatch: unknown tool {tool}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
