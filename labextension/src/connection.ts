// Comm link between the frontend and the `scoop_cluster` target of ONE kernel
// (the active notebook's). The kernel side lives in scoop_jupyter/comm.py.
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

export const COMM_TARGET = 'scoop_cluster';

export type WorkerState = 'idle' | 'busy' | 'joining' | 'lost';

export interface IWorker {
  id: string;
  name: string; // "w3": the worker's one name (output prefix, tracebacks, dashboard)
  host: string;
  pid: number;
  state: WorkerState;
  queued: number;
  running: number;
  done: number;
  cpu: number; // percent, may exceed 100 on multi-threaded workers
  mem: number; // bytes
}

/** A batch job (sbatch/qsub) of the cluster: its workers wait in the queue while pending. */
export interface IJob {
  id: string;
  state: 'pending' | 'running' | 'ended';
  workers: string[]; // names of the workers it brings
  submitted: number; // epoch seconds
  reason: string; // why it waits, as the scheduler says ("Resources", "JobHeldUser")
  nodes: string;
  error?: string; // its workers failed to start
  replaces?: string; // a walltime replacement of that job
}

export interface ITotals {
  workers: number;
  pending_workers: number; // workers of jobs waiting in the queue
  busy: number; // 0..1
  done: number;
  queued: number;
  running: number;
  rate: number; // tasks/s
}

/** A panel command the kernel has not finished yet ("scaling to 4 workers…"). */
export interface IRequest {
  action: 'start' | 'scale' | 'stop';
  n: number | null;
  text: string;
  since: number; // epoch seconds
}

/** Adaptive scaling, when on. */
export interface IAdapt {
  minimum: number | null;
  maximum: number | null;
}

/** What a view of many workers shows first, from the kernel's snapshot model (newer kernels). */
export interface ISummary {
  states: { [state: string]: number };
  cpu_histogram: number[]; // workers per 10 % CPU band
  busiest: string[]; // worker names
  idle: string[];
}

export interface IClusterStatus {
  state: 'running' | 'stopped';
  started: boolean | null; // false: no cluster ever started in this kernel (null: not said)
  summary: ISummary | null;
  workers: IWorker[];
  jobs: IJob[];
  totals: ITotals;
  request: IRequest | null;
  adapt: IAdapt | null;
  kernelSession: string | null; // the kernel process's message-session id (live outputs carry it)
}

/** Finished tasks for the task stream, as the kernel sends them (see scoop_jupyter/comm.py). */
export interface ITaskBatch {
  reset: boolean;
  workers: string[];
  names: string[];
  // [worker index, name index, start (epoch s), duration (s), inputs, ok, group]
  tasks: [number, number, number, number, number, boolean, number][];
}

/** What the UI can say about the active kernel. */
export type Phase = 'no-kernel' | 'connecting' | 'not-loaded' | 'connected';

export type Action =
  | { action: 'start'; n: number }
  | { action: 'scale'; n: number }
  | { action: 'adapt'; minimum: number; maximum: number }
  | { action: 'adapt'; off: true }
  | { action: 'stop' }
  | { action: 'stream'; on: boolean }
  | { action: 'refresh' };

/** What JupyterLab's comm handler has beyond Kernel.IComm (services 7.4+): the kernel subshell
 * (JEP 91) its messages go to, so the kernel handles them while a cell runs. */
interface ISubshellComm {
  commsOverSubshells?: string;
  subshellStarted?: Promise<void>;
  subshellId?: string | null;
}

// Longest wait for the comm's subshell before opening it on the main shell anyway.
const SUBSHELL_TIMEOUT_MS = 3000;

const RETRY_MIN_MS = 2000;
// Each failed comm_open makes ipykernel log "No such comm target", so back off.
const RETRY_MAX_MS = 30000;
// A kernel that accepts the comm must send a status right away (protocol).
const FIRST_STATUS_TIMEOUT_MS = 2000;
// Kernel states after which comms of the old kernel process are gone.
const RESET_STATES: ReadonlyArray<Kernel.Status> = [
  'restarting',
  'autorestarting',
  'starting',
  'dead',
  'terminating'
];

export class ScoopConnection {
  get changed(): ISignal<this, void> {
    return this._changed;
  }
  /** Finished tasks, while the task stream is on (see setStream). */
  get tasks(): ISignal<this, ITaskBatch> {
    return this._tasks;
  }
  /** Whether the kernel is running a cell (or another request) now. */
  get kernelBusy(): boolean {
    return this._kernel?.status === 'busy';
  }
  /** Whether the panel's commands reach the kernel on a subshell (they work while a cell runs). */
  get onSubshell(): boolean {
    return this._onSubshell;
  }
  get phase(): Phase {
    return this._phase;
  }
  get status(): IClusterStatus | null {
    return this._status;
  }
  /** Message of the kernel's last `{"type": "error"}` reply (cleared by send). */
  get error(): string {
    return this._error;
  }
  /** Path of the notebook whose kernel is followed ('' if none). */
  get path(): string {
    return this._ctx?.path ?? '';
  }
  get hasNotebook(): boolean {
    return this._ctx !== null;
  }

  /** Follow another notebook's session (or none). */
  setSession(ctx: ISessionContext | null): void {
    if (ctx === this._ctx) {
      return;
    }
    if (this._ctx) {
      this._ctx.kernelChanged.disconnect(this._onKernelChanged, this);
      this._ctx.sessionChanged.disconnect(this._onKernelChanged, this);
      this._ctx.statusChanged.disconnect(this._onKernelStatus, this);
      this._ctx.disposed.disconnect(this._onCtxDisposed, this);
    }
    this._ctx = ctx;
    if (ctx) {
      ctx.kernelChanged.connect(this._onKernelChanged, this);
      ctx.sessionChanged.connect(this._onKernelChanged, this);
      ctx.statusChanged.connect(this._onKernelStatus, this);
      ctx.disposed.connect(this._onCtxDisposed, this);
    }
    this._setKernel(ctx?.session?.kernel ?? null, true);
  }

  /** Send an action to the kernel; false if there is no live comm. */
  send(action: Action): boolean {
    const comm = this._comm;
    if (this._phase !== 'connected' || !comm || comm.isDisposed) {
      return false;
    }
    this._error = '';
    comm.send(action as any);
    return true;
  }

  /** Whether the kernel sends finished tasks (the task stream is open); kept across reconnects. */
  setStream(on: boolean): void {
    this._stream = on;
    this.send({ action: 'stream', on });
  }

  dispose(): void {
    this.setSession(null);
    Signal.clearData(this);
  }

  private _onCtxDisposed(): void {
    this.setSession(null);
  }

  private _onKernelChanged(): void {
    this._setKernel(this._ctx?.session?.kernel ?? null, false);
  }

  private _onKernelStatus(_: ISessionContext, status: Kernel.Status): void {
    if (RESET_STATES.includes(status) && this._phase !== 'no-kernel') {
      // Restart: the kernel connection object survives but its comms are
      // disposed without onClose, and the new process has no extension loaded.
      this._dropComm(false);
      this._status = null;
      this._delay = RETRY_MIN_MS;
      const gone = status === 'dead' || status === 'terminating';
      this._setPhase(gone ? 'no-kernel' : 'connecting', true);
      if (!gone) {
        this._schedule();
      }
    }
  }

  private _onIopub(_: Kernel.IKernelConnection, msg: KernelMessage.IIOPubMessage): void {
    // Retry right after each executed cell: that is how `%load_ext` arrives.
    // Only execute_request counts, or our own comm_open busy/idle would loop.
    if (
      this._phase === 'not-loaded' &&
      KernelMessage.isStatusMsg(msg) &&
      msg.content.execution_state === 'idle' &&
      (msg.parent_header as Partial<KernelMessage.IHeader>).msg_type === 'execute_request'
    ) {
      this._delay = RETRY_MIN_MS;
      this._tryOpen();
    }
  }

  private _setKernel(kernel: Kernel.IKernelConnection | null, force: boolean): void {
    if (kernel === this._kernel && !force) {
      return;
    }
    this._dropComm(true);
    if (this._kernel && this._kernel !== kernel) {
      this._kernel.iopubMessage.disconnect(this._onIopub, this);
    }
    if (kernel && kernel !== this._kernel) {
      kernel.iopubMessage.connect(this._onIopub, this);
    }
    this._kernel = kernel;
    this._status = null;
    this._error = '';
    this._delay = RETRY_MIN_MS;
    if (kernel) {
      this._setPhase('connecting', true);
      this._tryOpen();
    } else {
      this._setPhase('no-kernel', true);
    }
  }

  private _tryOpen(): void {
    window.clearTimeout(this._timer);
    const kernel = this._kernel;
    if (!kernel || kernel.isDisposed) {
      this._setPhase('no-kernel');
      return;
    }
    if (this._comm && !this._comm.isDisposed) {
      return; // an attempt is pending (kernel busy) or we are connected
    }
    const gen = ++this._gen;
    let comm: Kernel.IComm;
    try {
      comm = kernel.createComm(COMM_TARGET);
    } catch (err) {
      console.warn('scoop-jupyter: cannot create comm', err);
      this._schedule();
      return;
    }
    this._comm = comm;
    this._gotStatus = false;
    this._onSubshell = false;
    comm.onMsg = msg => {
      if (gen === this._gen) {
        this._onData(msg.content.data);
      }
    };
    // Unregistered target: ipykernel answers comm_open with comm_close.
    comm.onClose = () => {
      if (gen === this._gen) {
        this._comm = null;
        this._status = null;
        this._setPhase('not-loaded');
        this._schedule();
      }
    };
    const giveUp = () => {
      if (gen === this._gen && this._comm === comm && !this._gotStatus) {
        this._dropComm(true);
        this._setPhase('not-loaded');
        this._schedule();
      }
    };
    const open = () => {
      if (gen !== this._gen || comm.isDisposed) {
        return;
      }
      this._onSubshell = !!(comm as ISubshellComm).subshellId;
      try {
        // `done` resolves once the kernel has handled comm_open (on the main shell it may
        // sit in the queue while a long cell runs: we stay 'connecting' then).
        comm
          .open({})
          .done.then(() => window.setTimeout(giveUp, FIRST_STATUS_TIMEOUT_MS))
          .catch(giveUp);
      } catch (err) {
        giveUp();
      }
    };
    void this._subshell(kernel, comm).then(open, open);
  }

  /** Waits until the comm has its kernel subshell, where the kernel offers them: its messages
   * are then handled on the subshell's thread, not behind a running cell. */
  private async _subshell(kernel: Kernel.IKernelConnection, comm: Kernel.IComm): Promise<void> {
    const c = comm as unknown as ISubshellComm;
    if (c.subshellStarted === undefined) {
      return; // services before 7.4: no subshells
    }
    await kernel.info;
    if (!kernel.supportsSubshells) {
      return;
    }
    if (c.commsOverSubshells === 'disabled') {
      c.commsOverSubshells = 'perCommTarget'; // the panel needs it whatever the global setting
    }
    let timer = 0;
    await Promise.race([
      c.subshellStarted.catch(() => undefined),
      new Promise<void>(resolve => {
        timer = window.setTimeout(resolve, SUBSHELL_TIMEOUT_MS);
      })
    ]);
    window.clearTimeout(timer);
  }

  private _onData(data: unknown): void {
    const msg = data as { type?: unknown; message?: unknown } | null;
    if (msg?.type === 'error') {
      this._error = String(msg.message ?? 'unknown error');
      this._changed.emit();
      return;
    }
    if (msg?.type === 'tasks') {
      const batch = parseTasks(data);
      if (batch) {
        this._tasks.emit(batch);
      }
      return;
    }
    const status = parseStatus(data);
    if (!status) {
      return;
    }
    this._gotStatus = true;
    this._delay = RETRY_MIN_MS;
    this._status = status;
    const first = this._phase !== 'connected';
    this._setPhase('connected', true);
    if (first && this._stream) {
      this.send({ action: 'stream', on: true }); // a stream open before a restart resumes
    }
  }

  private _schedule(): void {
    window.clearTimeout(this._timer);
    if (!this._kernel) {
      return;
    }
    this._timer = window.setTimeout(() => this._tryOpen(), this._delay);
    this._delay = Math.min(this._delay * 2, RETRY_MAX_MS);
  }

  private _dropComm(sendClose: boolean): void {
    window.clearTimeout(this._timer);
    this._gen++; // silences callbacks of the dropped comm
    const comm = this._comm;
    this._comm = null;
    if (comm && !comm.isDisposed && sendClose) {
      try {
        comm.close();
      } catch {
        // kernel already gone: nothing to tell it
      }
    }
  }

  private _setPhase(phase: Phase, emit = false): void {
    if (phase !== this._phase || emit) {
      this._phase = phase;
      this._changed.emit();
    }
  }

  private _ctx: ISessionContext | null = null;
  private _kernel: Kernel.IKernelConnection | null = null;
  private _comm: Kernel.IComm | null = null;
  private _gen = 0;
  private _gotStatus = false;
  private _timer = 0;
  private _delay = RETRY_MIN_MS;
  private _phase: Phase = 'no-kernel';
  private _status: IClusterStatus | null = null;
  private _error = '';
  private _stream = false;
  private _onSubshell = false;
  private _changed = new Signal<this, void>(this);
  private _tasks = new Signal<this, ITaskBatch>(this);
}

/** Validate a task-stream message (rows with a wrong shape are dropped). */
export function parseTasks(data: unknown): ITaskBatch | null {
  const d = data as { [key: string]: any } | null;
  if (!d || d.type !== 'tasks' || !Array.isArray(d.tasks)) {
    return null;
  }
  return {
    reset: !!d.reset,
    workers: Array.isArray(d.workers) ? d.workers.map(String) : [],
    names: Array.isArray(d.names) ? d.names.map(String) : [],
    tasks: d.tasks.filter((t: unknown) => Array.isArray(t) && t.length >= 6)
  };
}

function num(value: unknown, fallback = 0): number {
  return typeof value === 'number' && isFinite(value) ? value : fallback;
}

/** Validate a kernel message; tolerate missing fields rather than crash the UI. */
export function parseStatus(data: unknown): IClusterStatus | null {
  if (!data || typeof data !== 'object') {
    return null;
  }
  const d = data as { [key: string]: any };
  if (d.type !== 'status') {
    return null;
  }
  const workers: IWorker[] = (Array.isArray(d.workers) ? d.workers : []).map(
    (w: any): IWorker => ({
      id: String(w?.id ?? ''),
      name: String(w?.name || (w?.id ? `#${w.id}` : '')),
      host: String(w?.host ?? '?'),
      pid: num(w?.pid),
      state: ['idle', 'busy', 'joining', 'lost'].includes(w?.state) ? w.state : 'idle',
      queued: num(w?.queued),
      running: num(w?.running),
      done: num(w?.done),
      cpu: num(w?.cpu),
      mem: num(w?.mem)
    })
  );
  const jobs: IJob[] = (Array.isArray(d.jobs) ? d.jobs : []).map(
    (j: any): IJob => ({
      id: String(j?.id ?? ''),
      state: ['pending', 'running', 'ended'].includes(j?.state) ? j.state : 'pending',
      workers: Array.isArray(j?.workers) ? j.workers.map(String) : [],
      submitted: num(j?.submitted),
      reason: String(j?.reason ?? ''),
      nodes: String(j?.nodes ?? ''),
      ...(j?.error ? { error: String(j.error) } : {}),
      ...(j?.replaces ? { replaces: String(j.replaces) } : {})
    })
  );
  const pendingSum = jobs
    .filter(j => j.state === 'pending' && !j.replaces)
    .reduce((acc, j) => acc + j.workers.length, 0);
  const r = d.request && typeof d.request === 'object' ? d.request : null;
  const request: IRequest | null =
    r && ['start', 'scale', 'stop'].includes(r.action)
      ? {
          action: r.action,
          n: typeof r.n === 'number' ? r.n : null,
          text: String(r.text ?? ''),
          since: num(r.since)
        }
      : null;
  const a = d.adapt && typeof d.adapt === 'object' ? d.adapt : null;
  const adapt: IAdapt | null = a
    ? {
        minimum: typeof a.minimum === 'number' ? a.minimum : null,
        maximum: typeof a.maximum === 'number' ? a.maximum : null
      }
    : null;
  const m = d.summary && typeof d.summary === 'object' ? d.summary : null;
  const names = (x: unknown) => (Array.isArray(x) ? x.map(String) : []);
  const summary: ISummary | null =
    m && Array.isArray(m.cpu_histogram)
      ? {
          states: m.states && typeof m.states === 'object' ? m.states : {},
          cpu_histogram: m.cpu_histogram.map((v: unknown) => num(v)),
          busiest: names(m.busiest),
          idle: names(m.idle)
        }
      : null;
  const t = d.totals && typeof d.totals === 'object' ? d.totals : {};
  const sum = (key: 'done' | 'queued' | 'running') =>
    workers.reduce((acc, w) => acc + w[key], 0);
  return {
    state: d.state === 'running' ? 'running' : 'stopped',
    started: typeof d.started === 'boolean' ? d.started : null,
    summary,
    workers,
    jobs,
    request,
    adapt,
    kernelSession: typeof d.kernel_session === 'string' ? d.kernel_session : null,
    totals: {
      workers: num(t.workers, workers.length),
      pending_workers: num(t.pending_workers, pendingSum),
      busy: Math.min(1, Math.max(0, num(t.busy))),
      done: num(t.done, sum('done')),
      queued: num(t.queued, sum('queued')),
      running: num(t.running, sum('running')),
      rate: num(t.rate)
    }
  };
}
