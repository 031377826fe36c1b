import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IClusterStatus, IJob, IWorker, ScoopConnection } from './connection';

const PANEL_ID = 'scoop-cluster-panel';
const DOCS_URL = 'https://scoop.readthedocs.io/en/latest/usage.html';
const LOAD_HINT = 'SCOOP extension not loaded in this kernel — run %load_ext scoop_jupyter';

const scoopIcon = new LabIcon({
  name: 'scoop-jupyter:cluster',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<circle cx="12" cy="4.5" r="3"/><circle cx="4.5" cy="18.5" r="3"/><circle cx="19.5" cy="18.5" r="3"/>' +
    '<path d="M11 7h2v4.6l5.4 4.6-1.3 1.5L12 13.4l-5.1 4.3-1.3-1.5 5.4-4.6z"/></g></svg>'
});

/** Header badge / status bar wording for the current phase + cluster state. */
function stateLabel(model: ScoopConnection): string {
  switch (model.phase) {
    case 'no-kernel':
      return 'no kernel';
    case 'connecting':
      return 'connecting';
    case 'not-loaded':
      return 'not loaded';
    default:
      return model.status?.state ?? 'connecting';
  }
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Jobs waiting in the queue that bring new workers (not walltime replacements). */
function pendingJobs(status: IClusterStatus): IJob[] {
  return status.jobs.filter(j => j.state === 'pending' && !j.replaces);
}

/** "4 workers pending in the queue (jobs 12, 13: Resources)", as the kernel's views say it. */
function pendingText(status: IClusterStatus): string {
  const jobs = pendingJobs(status);
  if (!jobs.length) {
    return '';
  }
  const n = jobs.reduce((acc, j) => acc + j.workers.length, 0);
  const reasons = [...new Set(jobs.map(j => j.reason).filter(r => r))].sort();
  const why = reasons.length ? `: ${reasons.join(', ')}` : '';
  const ids = jobs.map(j => j.id).join(', ');
  return `${plural(n, 'worker')} pending in the queue (${jobs.length > 1 ? 'jobs' : 'job'} ${ids}${why})`;
}

function fmtTime(epoch: number): string {
  return epoch > 0 ? new Date(epoch * 1000).toLocaleTimeString('en-GB') : '';
}

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** Binary units, as the kernel's dashboard and status print them. */
function fmtBytes(n: number): string {
  if (n <= 0) {
    return '–';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i >= 2 ? 1 : 0)} ${units[i]}`;
}

/** Load bar width: full while the worker holds tasks (a task that sleeps or waits on I/O
 * keeps it busy with little CPU), else its measured CPU. */
function loadPercent(w: IWorker): number {
  if (w.state === 'busy') {
    return 100;
  }
  return w.state === 'idle' ? Math.min(100, Math.max(0, w.cpu)) : 0;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Left sidebar panel showing the active notebook kernel's cluster. */
class ScoopPanel extends Widget {
  constructor(model: ScoopConnection) {
    super();
    this._model = model;
    this.id = PANEL_ID;
    this.addClass('scoop-panel');
    this.title.icon = scoopIcon;
    this.title.label = 'SCOOP';
    this.title.caption = 'SCOOP cluster';

    const header = el('div', 'scoop-header');
    header.append(el('span', 'scoop-title', 'SCOOP'), this._badge);
    const controls = el('div', 'scoop-controls');
    const label = el('label', 'scoop-n-label', 'Workers ');
    this._nInput.type = 'number';
    this._nInput.min = '1';
    this._nInput.value = String(Math.max(1, navigator.hardwareConcurrency || 2));
    this._nInput.className = 'scoop-n-input jp-mod-styled';
    this._nInput.title = 'Number of workers to start';
    label.append(this._nInput);
    this._start.id = 'scoop-start-button';
    this._start.className = 'jp-mod-styled jp-mod-accept';
    this._start.textContent = 'Start';
    this._scale.id = 'scoop-scale-button';
    this._scale.className = 'jp-mod-styled jp-mod-accept';
    this._scale.textContent = 'Scale';
    this._scale.title = 'Grow or shrink the running cluster to this many workers';
    this._stop.id = 'scoop-stop-button';
    this._stop.className = 'jp-mod-styled jp-mod-warn';
    this._stop.textContent = 'Stop';
    controls.append(label, this._start, this._scale, this._stop);
    const docs = el('a', 'scoop-docs', 'Documentation');
    docs.href = DOCS_URL;
    docs.target = '_blank';
    docs.rel = 'noopener';
    docs.title = 'SCOOP documentation (opens a new tab)';
    const help = el('div', 'scoop-help');
    help.append(
      docs,
      el('span', 'scoop-help-hint', ' · %scoop_cluster --help in a cell')
    );

    this.node.append(
      header,
      this._source,
      this._message,
      controls,
      this._error,
      this._totals,
      this._jobs,
      this._workers,
      help
    );

    this._start.addEventListener('click', () => this._startCluster());
    this._scale.addEventListener('click', () => this._scaleCluster());
    this._nInput.addEventListener('keydown', ev => {
      if (ev.key === 'Enter') {
        if (this._model.status?.state === 'running') {
          this._scaleCluster();
        } else {
          this._startCluster();
        }
      }
    });
    // While the user edits the number it is theirs; otherwise it follows the cluster's size.
    this._nInput.addEventListener('input', () => {
      this._edited = true;
    });
    this._stop.addEventListener('click', () => {
      if (this._model.send({ action: 'stop' })) {
        this._stop.disabled = true; // re-enabled by the next status
      }
    });
    model.changed.connect(() => this.update(), this);
  }

  protected onAfterShow(msg: Message): void {
    // Status only streams while a cluster runs: ask for a fresh one.
    this._model.send({ action: 'refresh' });
    this.update();
  }

  protected onUpdateRequest(msg: Message): void {
    if (this.isVisible) {
      this._render();
    }
  }

  private _startCluster(): void {
    const n = parseInt(this._nInput.value, 10);
    if (!(n >= 1)) {
      this._nInput.focus();
      return;
    }
    if (this._model.send({ action: 'start', n })) {
      this._start.disabled = true;
    }
  }

  private _scaleCluster(): void {
    const n = parseInt(this._nInput.value, 10);
    if (!(n >= 1)) {
      this._nInput.focus();
      return;
    }
    if (this._model.send({ action: 'scale', n })) {
      this._scale.disabled = true; // re-enabled by the next status
      this._edited = false;
    }
  }

  private _render(): void {
    const model = this._model;
    const status: IClusterStatus | null = model.phase === 'connected' ? model.status : null;
    const state = stateLabel(model);
    this._badge.textContent = state;
    this._badge.className = `scoop-state scoop-state-${state.replace(' ', '-')}`;
    this._source.textContent = model.path ? `Kernel of ${model.path}` : '';

    let message = '';
    if (model.phase === 'no-kernel') {
      message = model.hasNotebook
        ? 'The active notebook has no running kernel.'
        : 'Open a notebook to see its SCOOP cluster.';
    } else if (model.phase === 'not-loaded') {
      message = LOAD_HINT;
    } else if (model.phase === 'connecting') {
      message = 'Connecting to the kernel…';
    } else if (status?.state === 'stopped') {
      message = 'Cluster stopped. Start one here or run %scoop_cluster start -n N.';
    }
    this._message.textContent = message;
    this._message.hidden = !message;
    this._error.textContent = model.error;
    this._error.hidden = !model.error;

    const running = status?.state === 'running';
    this._start.disabled = !status || running;
    this._start.hidden = running;
    this._scale.hidden = !running;
    this._scale.disabled = !running;
    this._stop.disabled = !running;
    this._nInput.disabled = !status;
    this._nInput.title = running
      ? 'Workers of the running cluster: change and press Scale'
      : 'Number of workers to start';
    if (running && status && !this._edited && document.activeElement !== this._nInput) {
      // the size asked for: workers running plus those whose jobs wait in the queue
      const size =
        status.workers.filter(w => w.state !== 'lost').length + status.totals.pending_workers;
      if (size > 0 && this._nInput.value !== String(size)) {
        this._nInput.value = String(size);
      }
    }

    this._renderTotals(status);
    this._renderJobs(status?.state === 'running' ? status : null);
    this._renderWorkers(status?.workers ?? []);
  }

  private _renderTotals(status: IClusterStatus | null): void {
    this._totals.replaceChildren();
    this._totals.hidden = !status;
    if (!status) {
      return;
    }
    const t = status.totals;
    const items: [string, string][] = [
      ['Workers', fmtInt(t.workers)],
      ...(t.pending_workers > 0
        ? ([['Pending', fmtInt(t.pending_workers)]] as [string, string][])
        : []),
      ['Busy', `${Math.round(t.busy * 100)}%`],
      ['Done', fmtInt(t.done)],
      ['Queued', fmtInt(t.queued)],
      ['Running', fmtInt(t.running)],
      ['Throughput', `${t.rate < 10 ? t.rate.toFixed(1) : fmtInt(t.rate)}/s`]
    ];
    for (const [name, value] of items) {
      const cell = el('div', 'scoop-total');
      cell.append(el('div', 'scoop-total-value', value), el('div', 'scoop-total-name', name));
      this._totals.append(cell);
    }
  }

  /** Batch jobs: the workers waiting in the queue apart from the running ones, one line per
   * job (its workers, why it waits, when it was submitted), and jobs whose workers failed. */
  private _renderJobs(status: IClusterStatus | null): void {
    this._jobs.replaceChildren();
    const jobs = status ? status.jobs.filter(j => j.state !== 'ended' || j.error) : [];
    this._jobs.hidden = !jobs.length;
    if (!status || !jobs.length) {
      return;
    }
    const summary = pendingText(status);
    if (summary) {
      this._jobs.append(el('div', 'scoop-pending', summary));
    }
    for (const j of jobs) {
      const row = el('div', `scoop-job-row scoop-job-${j.error ? 'failed' : j.state}`);
      row.dataset.jobId = j.id;
      const top = el('div', 'scoop-job-top');
      top.append(
        el('span', 'scoop-job-id', `job ${j.id}`),
        el('span', 'scoop-job-workers', j.workers.join(', ')),
        el('span', 'scoop-job-state', j.error ? 'failed' : j.state)
      );
      const detail = j.error
        ? j.error.split('\n').filter(x => x.trim()).slice(-1)[0] ?? ''
        : [
            j.replaces ? `replaces job ${j.replaces}` : '',
            j.state === 'pending' ? j.reason : j.nodes,
            j.submitted ? `submitted ${fmtTime(j.submitted)}` : ''
          ]
            .filter(x => x)
            .join(' · ');
      row.append(top, el('div', 'scoop-job-detail', detail));
      if (j.error) {
        row.title = j.error;
      }
      this._jobs.append(row);
    }
  }

  private _renderWorkers(workers: IWorker[]): void {
    // Rebuilt wholesale: a status is ≤10/s and small, not worth DOM diffing.
    this._workers.replaceChildren(
      ...workers.map(w => {
        const row = el('div', `scoop-worker-row scoop-worker-${w.state}`);
        row.dataset.workerId = w.id;
        row.dataset.workerName = w.name;
        const top = el('div', 'scoop-worker-top');
        top.append(
          el('span', 'scoop-worker-name', w.name || '…'),
          el('span', 'scoop-worker-host', w.host),
          el('span', 'scoop-worker-pid', `pid ${w.pid}`),
          el('span', 'scoop-worker-state', w.state)
        );
        const track = el('div', 'scoop-load');
        const bar = el('div', 'scoop-load-bar');
        const pct = loadPercent(w);
        bar.style.width = `${pct}%`;
        track.title = `${w.state}, ${w.cpu.toFixed(0)}% CPU`;
        track.append(bar);
        const stats = el('div', 'scoop-worker-stats');
        stats.append(
          el('span', '', `${fmtInt(w.done)} done · ${w.running} running · ${w.queued} queued`),
          el('span', '', `${w.cpu.toFixed(0)}% cpu · ${fmtBytes(w.mem)}`)
        );
        row.append(top, track, stats);
        return row;
      })
    );
  }

  private _model: ScoopConnection;
  private _badge = el('span', 'scoop-state');
  private _source = el('div', 'scoop-source');
  private _message = el('div', 'scoop-message');
  private _error = el('div', 'scoop-error');
  private _nInput = document.createElement('input');
  private _start = document.createElement('button');
  private _stop = document.createElement('button');
  private _scale = document.createElement('button');
  private _edited = false;
  private _totals = el('div', 'scoop-totals');
  private _jobs = el('div', 'scoop-jobs');
  private _workers = el('div', 'scoop-workers');
}

/** Status bar text: "SCOOP: 4 workers, 73% busy", "SCOOP: 2 workers (+4 pending), 0% busy" (batch
 * jobs waiting in the queue) / "SCOOP: stopped". */
class ScoopStatusItem extends Widget {
  constructor(model: ScoopConnection) {
    super();
    this._model = model;
    this.id = 'scoop-status-item';
    this.addClass('scoop-status-item');
    this.node.title = 'SCOOP cluster of the active notebook (click to show)';
    model.changed.connect(() => this.update(), this);
    this.update();
  }

  protected onUpdateRequest(msg: Message): void {
    const status = this._model.status;
    let text = `SCOOP: ${stateLabel(this._model)}`;
    if (this._model.phase === 'connected' && status?.state === 'running') {
      const t = status.totals;
      const pending = t.pending_workers > 0 ? ` (+${t.pending_workers} pending)` : '';
      text = `SCOOP: ${plural(t.workers, 'worker')}${pending}, ${Math.round(t.busy * 100)}% busy`;
    }
    this.node.textContent = text;
  }

  private _model: ScoopConnection;
}

/** Kernel states after which a dashboard's data source is gone for good. */
const GONE_STATES = ['dead', 'restarting', 'autorestarting', 'terminating'];

/**
 * Dashboards are widgets fed by their kernel: when it dies or restarts they can no longer
 * change, and their last frame ("● running · 3 workers") would lie.  Mark them stale.
 */
function markStaleDashboards(panel: NotebookPanel, why: string): void {
  panel.content.node.querySelectorAll('.scoop-dashboard-timeline').forEach(node => {
    node.classList.add('scoop-stale');
  });
  panel.content.node.querySelectorAll('.scoop-dashboard').forEach(node => {
    if (node.classList.contains('scoop-stale')) {
      return;
    }
    node.classList.add('scoop-stale');
    const state = node.querySelector('.scoop-dashboard-state');
    if (state) {
      state.textContent = '● stale';
    }
    const note = el('div', 'scoop-stale-note', `${why}: this view no longer updates.`);
    node.prepend(note);
  });
}

function watchForStaleDashboards(panel: NotebookPanel): void {
  const ctx = panel.sessionContext;
  ctx.statusChanged.connect((_, status) => {
    if (GONE_STATES.includes(status)) {
      markStaleDashboards(
        panel,
        status === 'dead' ? 'The kernel died' : 'The kernel restarted or shut down'
      );
    }
  });
  ctx.kernelChanged.connect((_, change) => {
    if (change.oldValue) {
      markStaleDashboards(panel, 'The kernel was shut down or changed');
    }
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'scoop-jupyter:plugin',
  description: 'Sidebar panel and status bar item for the SCOOP cluster of the active notebook.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new ScoopConnection();
    // currentWidget keeps the last focused notebook when e.g. a console gets
    // focus, which is what "the active notebook" should mean here.
    const follow = () => model.setSession(tracker.currentWidget?.sessionContext ?? null);
    tracker.currentChanged.connect(follow);
    follow();
    tracker.forEach(watchForStaleDashboards);
    tracker.widgetAdded.connect((_, panel) => watchForStaleDashboards(panel));

    const panel = new ScoopPanel(model);
    app.shell.add(panel, 'left', { rank: 700 });
    restorer?.add(panel, PANEL_ID);

    const command = 'scoop-jupyter:show-panel';
    app.commands.addCommand(command, {
      label: 'Show SCOOP Cluster Panel',
      execute: () => app.shell.activateById(PANEL_ID)
    });

    if (statusBar) {
      const item = new ScoopStatusItem(model);
      item.node.addEventListener('click', () => void app.commands.execute(command));
      statusBar.registerStatusItem('scoop-jupyter:status', {
        item,
        align: 'left',
        rank: 5
      });
    }
  }
};

export default plugin;
