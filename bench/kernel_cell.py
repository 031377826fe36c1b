"""Time "start a 2-worker cluster from a notebook cell" in a REAL IPython kernel.

    python bench/kernel_cell.py --runner us|mp|ppe|loky|dask|ipp

Starts an ipykernel (this interpreter, via jupyter_client), runs an untimed
setup cell, then times one cell from sending the execute_request until its
execute_reply arrives, checks the cell's value is 1, runs a cleanup cell and
shuts the kernel down.  Prints one JSON line: {"bench": "cell_start", "cell_s", ...}.

For "us" the timed cell is exactly
    %scoop_cluster start -n 2
    from scoop import futures
    futures.submit(abs, -1).result()
after an untimed `%load_ext scoop_jupyter`.  The peers' cells start their own
2-worker executor and run abs(-1) on it (see CELLS below) for comparison.
"""
import argparse
import json
import os
import queue
import shutil
import sys
import tempfile
import time

CELLS = {
    # runner: (setup cell (untimed), timed cell, cleanup cell)
    "us": ("%load_ext scoop_jupyter",
           "%scoop_cluster start -n 2\nfrom scoop import futures\nfutures.submit(abs, -1).result()",
           "%scoop_cluster stop"),
    "mp": ("",
           "import multiprocessing as mp\npool = mp.Pool(2)\npool.apply(abs, (-1,))",
           "pool.terminate(); pool.join()"),
    "ppe": ("",
            "from concurrent.futures import ProcessPoolExecutor\nex = ProcessPoolExecutor(2)\n"
            "ex.submit(abs, -1).result()",
            "ex.shutdown()"),
    "loky": ("",
             "from loky import get_reusable_executor\nex = get_reusable_executor(max_workers=2)\n"
             "ex.submit(abs, -1).result()",
             "ex.shutdown(kill_workers=True)"),
    "dask": ("",
             "from distributed import Client, LocalCluster\n"
             "cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, "
             "dashboard_address=None)\nclient = Client(cluster)\nclient.submit(abs, -1).result()",
             "client.close(); cluster.close()"),
    "ipp": ("",
            "import ipyparallel as ipp\ncluster = ipp.Cluster(n=2)\n"
            "rc = cluster.start_and_connect_sync()\nrc.load_balanced_view().apply_sync(abs, -1)",
            "rc.close(); cluster.stop_cluster_sync()"),
}


def execute(kc, code, timeout):
    """Run `code`; return (seconds until execute_reply, reply content, result text, error text)."""
    t0 = time.perf_counter()
    msg_id = kc.execute(code, store_history=False)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no execute_reply within {timeout}s for {code!r}")
        try:
            reply = kc.get_shell_msg(timeout=remaining)
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    dt = time.perf_counter() - t0
    result, errors = None, []
    # drain IOPub for this request (result value, errors, stderr)
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=5)
        except queue.Empty:
            break
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        mt, c = msg["msg_type"], msg["content"]
        if mt == "execute_result":
            result = c["data"].get("text/plain")
        elif mt == "error":
            errors.append(f"{c['ename']}: {c['evalue']}")
        elif mt == "status" and c["execution_state"] == "idle":
            break
    rc = reply["content"]
    if rc.get("status") == "error" and not errors:
        errors.append(f"{rc.get('ename')}: {rc.get('evalue')}")
    return dt, rc, result, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runner", required=True, choices=sorted(CELLS))
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    setup, cell, cleanup = CELLS[a.runner]
    # A private kernelspec pinned to this interpreter.
    kdir = tempfile.mkdtemp(prefix="bench-kernels-")
    os.makedirs(os.path.join(kdir, "benchpy"))
    with open(os.path.join(kdir, "benchpy", "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "bench", "language": "python"}, f)
    km = KernelManager(kernel_name="benchpy",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[kdir]))
    out = {"bench": "cell_start", "runner": a.runner, "cell": cell}
    t0 = time.perf_counter()
    km.start_kernel(env=dict(os.environ), cwd=os.getcwd())
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        out["kernel_ready_s"] = time.perf_counter() - t0
        if setup:
            _, rep, _, errs = execute(kc, setup, a.timeout)
            if rep["status"] != "ok":
                out.update(skipped=True, note=f"setup cell {setup!r} failed: {errs or rep}")
                return out
        if a.runner == "us":
            # `%load_ext` of a module without load_ipython_extension only prints a
            # message, so check that the magic is really there.
            _, rep, res, errs = execute(
                kc, "get_ipython().find_line_magic('scoop_cluster') is not None", a.timeout)
            if (res or "").strip() != "True":
                out.update(skipped=True, note="scoop_jupyter loaded but no %scoop_cluster magic "
                           f"(not implemented yet?) {errs or ''}".strip())
                return out
        dt, rep, result, errs = execute(kc, cell, a.timeout)
        out.update(cell_s=dt, status=rep["status"], result=result)
        if rep["status"] != "ok" or (result or "").strip() != "1":
            out.update(error=f"cell failed: status={rep['status']} result={result!r} {errs}")
        if cleanup:
            t1 = time.perf_counter()
            _, rep, _, errs = execute(kc, cleanup, a.timeout)
            out["cleanup_s"] = time.perf_counter() - t1
            if rep["status"] != "ok":
                out["cleanup_error"] = str(errs or rep)
        return out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        shutil.rmtree(kdir, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
