import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { IFrame, LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IClusterStatus, IJob, ScoopConnection } from './connection';
import { settleRecords } from './records';
import { TaskStreamWidget } from './taskstream';
import {
  busiestAndIdle,
  el,
  fmtInt,
  HeatStrip,
  loadHistogram,
  WorkerList
} from './workers';

const PANEL_ID = 'scoop-cluster-panel';
// This project's documentation, built into the extension's static files (docs/ in the source)
// and served by JupyterLab itself: it opens offline, on a compute node or a login node.
const DOCS_PATH = 'lab/extensions/scoop-jupyter/static/docs/index.html';
const LOAD_HINT = 'SCOOP extension not loaded in this kernel — run %load_ext scoop_jupyter';
// at least this many workers: the panel adds the heat strip, histogram, busiest and idle
const MANY = 8;
const CMD_PANEL = 'scoop-jupyter:show-panel';
const CMD_STREAM = 'scoop-jupyter:task-stream';
const CMD_DOCS = 'scoop-jupyter:docs';

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
  return `${fmtInt(n)} ${word}${n === 1 ? '' : 's'}`;
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

/** A command the panel sent that the kernel has not taken yet: on a kernel without subshells it
 * waits behind a running cell, and the panel says so instead of snapping back. */
interface ISent {
  action: 'start' | 'scale' | 'stop' | 'adapt';
  n: number | null; // workers asked for (start, scale)
  text: string;
  done: (status: IClusterStatus) => boolean; // a status shows its effect
}

const WAITS_FOR_CELL =
  ' the kernel takes it when the running cell ends (panel commands reach a busy kernel at once only ' +
  'on a kernel subshell: ipykernel 7 with JupyterLab 4.4 or later)';

function liveWorkers(status: IClusterStatus): number {
  return status.workers.filter(w => w.state === 'busy' || w.state === 'idle').length;
}

function numberInput(className: string, title: string, min: number): HTMLInputElement {
  const input = document.createElement('input');
  input.type = 'number';
  input.min = String(min);
  input.className = `${className} jp-mod-styled`;
  input.title = title;
  return input;
}

/** Left sidebar panel showing the active notebook kernel's cluster. */
class ScoopPanel extends Widget {
  constructor(model: ScoopConnection, commands: { stream: () => void; docs: () => void }) {
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
    this._nInput.value = String(Math.max(1, navigator.hardwareConcurrency || 2));
    label.append(this._nInput);
    this._start.id = 'scoop-start-button';
    this._start.className = 'jp-mod-styled jp-mod-accept';
    this._start.textContent = 'Start';
    this._scale.id = 'scoop-scale-button';
    this._scale.className = 'jp-mod-styled jp-mod-accept';
    this._scale.textContent = 'Scale';
    this._scale.title = 'Grow or shrink the running cluster to this many workers (also while a cell runs)';
    this._stop.id = 'scoop-stop-button';
    this._stop.className = 'jp-mod-styled jp-mod-warn';
    this._stop.textContent = 'Stop';
    this._stop.title = 'Stop the cluster (a cell waiting on its work is interrupted)';
    controls.append(label, this._start, this._scale, this._stop);

    // adaptive scaling: a switch and its bounds
    this._adaptBox.type = 'checkbox';
    this._adaptBox.id = 'scoop-adapt-switch';
    this._adaptBox.className = 'scoop-adapt-switch';
    const adaptLabel = el('label', 'scoop-adapt-label');
    adaptLabel.append(this._adaptBox, document.createTextNode(' Adapt'));
    adaptLabel.title = 'Grow with queued work and retire idle workers, between these bounds';
    this._adaptMin.value = '1';
    this._adaptMax.value = String(Math.max(2, (navigator.hardwareConcurrency || 2) * 2));
    const range = el('span', 'scoop-adapt-range');
    range.append(this._adaptMin, document.createTextNode(' – '), this._adaptMax);
    this._adapt.append(adaptLabel, range);

    const tools = el('div', 'scoop-tools');
    const streamButton = el('button', 'jp-mod-styled scoop-stream-button', 'Task stream');
    streamButton.id = 'scoop-stream-button';
    streamButton.title = 'Open the live task stream: a row per worker, a bar per task';
    streamButton.addEventListener('click', commands.stream);
    tools.append(streamButton);

    const docs = el('a', 'scoop-docs', 'Documentation');
    docs.href = '#';
    docs.title = "This project's documentation, in a JupyterLab tab (works offline)";
    docs.addEventListener('click', ev => {
      ev.preventDefault();
      commands.docs();
    });
    const help = el('div', 'scoop-help');
    help.append(docs, el('span', 'scoop-help-hint', ' · %scoop_cluster --help in a cell'));

    this._many.append(this._heat.node, this._histogram, this._extremes);
    this.node.append(
      header,
      this._source,
      this._message,
      controls,
      this._request,
      this._adapt,
      this._error,
      this._totals,
      this._jobs,
      this._many,
      tools,
      this._list.node,
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
        this._sent = { action: 'stop', n: null, text: 'stop sent…', done: s => s.state === 'stopped' };
        this.update();
      }
    });
    this._adaptBox.addEventListener('change', () => this._sendAdapt());
    for (const input of [this._adaptMin, this._adaptMax]) {
      input.addEventListener('change', () => {
        if (this._adaptBox.checked) {
          this._sendAdapt();
        }
      });
    }
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
      this._sent = { action: 'start', n, text: `start of ${n} sent…`, done: s => s.state === 'running' };
      this._edited = false;
      this.update();
    }
  }

  private _scaleCluster(): void {
    const n = parseInt(this._nInput.value, 10);
    if (!(n >= 1)) {
      this._nInput.focus();
      return;
    }
    if (this._model.send({ action: 'scale', n })) {
      // the kernel answers at once with the request pending ("scaling to n…"); until it does
      // (a kernel without subshells, busy in a cell) the panel says the command waits
      this._sent = { action: 'scale', n, text: `scale to ${n} sent…`, done: s => liveWorkers(s) === n };
      this._edited = false;
      this.update();
    }
  }

  private _sendAdapt(): void {
    // the switch shows the user's choice until a status agrees (or an error comes back)
    this._adaptWanted = { on: this._adaptBox.checked, since: Date.now() };
    if (!this._adaptBox.checked) {
      if (this._model.send({ action: 'adapt', off: true })) {
        this._sent = { action: 'adapt', n: null, text: 'adapt off sent…', done: s => !s.adapt };
        this.update();
      }
      return;
    }
    const minimum = parseInt(this._adaptMin.value, 10);
    const maximum = parseInt(this._adaptMax.value, 10);
    if (!(minimum >= 0) || !(maximum >= Math.max(1, minimum))) {
      this._adaptBox.checked = false;
      this._adaptWanted = null;
      this._adaptMax.focus();
      return;
    }
    if (this._model.send({ action: 'adapt', minimum, maximum })) {
      this._sent = {
        action: 'adapt',
        n: null,
        text: `adapt ${minimum}–${maximum} sent…`,
        done: s => s.adapt?.minimum === minimum && s.adapt?.maximum === maximum
      };
      this.update();
    }
  }

  private _render(): void {
    const model = this._model;
    const status: IClusterStatus | null = model.phase === 'connected' ? model.status : null;
    const state = stateLabel(model);
    this._badge.textContent = state;
    this._badge.className = `scoop-state scoop-state-${state.replace(' ', '-')}`;
    this._source.textContent = model.path ? `Kernel of ${model.path}` : '';

    const request = status?.request ?? null;
    if (this._sent && (request || model.error || !status || this._sent.done(status))) {
      this._sent = null; // the kernel has it (or it failed, or it is done)
    }
    const sent = this._sent;
    let message = '';
    if (model.phase === 'no-kernel') {
      message = model.hasNotebook
        ? 'The active notebook has no running kernel.'
        : 'Open a notebook to see its SCOOP cluster.';
    } else if (model.phase === 'not-loaded') {
      message = LOAD_HINT;
    } else if (model.phase === 'connecting') {
      message = 'Connecting to the kernel…';
    } else if (status?.state === 'stopped' && !status.request && !sent) {
      message = `${status.started === false ? 'No cluster yet' : 'No cluster running'}. ` +
        'Start one here or run %scoop_cluster start -n N.';
    }
    this._message.textContent = message;
    this._message.hidden = !message;
    this._error.textContent = model.error;
    this._error.hidden = !model.error;

    const waiting = sent !== null && model.kernelBusy && !model.onSubshell;
    let requestText = request?.text ?? '';
    if (!request && sent) {
      requestText = sent.text + (waiting ? WAITS_FOR_CELL : '');
    }
    this._request.replaceChildren();
    this._request.hidden = !requestText;
    if (requestText) {
      this._request.append(el('span', 'scoop-spinner'), el('span', 'scoop-request-text', requestText));
      this._request.dataset.action = request?.action ?? sent?.action ?? '';
      this._request.classList.toggle('scoop-request-waiting', !request && waiting);
    }

    const running = status?.state === 'running';
    this._start.disabled = !status || running || request?.action === 'start' || sent?.action === 'start';
    this._start.hidden = running;
    this._scale.hidden = !running;
    this._scale.disabled = !running || request?.action === 'stop';
    this._stop.disabled = !running || request?.action === 'stop' || sent?.action === 'stop';
    this._nInput.disabled = !status;
    this._nInput.title = running
      ? 'Workers of the running cluster: change and press Scale'
      : 'Number of workers to start';
    if (running && status && !this._edited && document.activeElement !== this._nInput) {
      // the size asked for: a request in progress, else the workers running plus those whose
      // jobs wait in the queue
      const size =
        request?.action === 'scale' && request.n
          ? request.n
          : (sent?.action === 'scale' ? sent.n : null) ??
            status.workers.filter(w => w.state !== 'lost').length + status.totals.pending_workers;
      if (size > 0 && this._nInput.value !== String(size)) {
        this._nInput.value = String(size);
      }
    }

    // the adapt switch follows the kernel unless the user is editing its bounds
    this._adapt.hidden = !running;
    this._adaptBox.disabled = !running;
    const adapt = status?.adapt ?? null;
    const wanted = this._adaptWanted;
    // (a command waiting behind a cell keeps the switch as the user set it)
    const expired = wanted !== null && Date.now() - wanted.since > 5000 && sent?.action !== 'adapt';
    if (wanted && (wanted.on === !!adapt || model.error || expired)) {
      this._adaptWanted = null;
    }
    this._adaptBox.checked = this._adaptWanted ? this._adaptWanted.on : !!adapt;
    this._adapt.classList.toggle('scoop-adapt-on', !!adapt);
    const editing = [this._adaptMin, this._adaptMax].includes(document.activeElement as HTMLInputElement);
    if (adapt && !editing) {
      if (adapt.minimum !== null) {
        this._adaptMin.value = String(adapt.minimum);
      }
      if (adapt.maximum !== null) {
        this._adaptMax.value = String(adapt.maximum);
      }
    }

    this._renderTotals(status);
    this._renderJobs(status?.state === 'running' ? status : null);
    const workers = status?.workers ?? [];
    const many = workers.length >= MANY;
    this._many.hidden = !many;
    if (many) {
      this._heat.set(workers, Math.max(100, this.node.clientWidth - 24));
      const histogram = loadHistogram(workers, status?.summary ?? null);
      this._histogram.replaceWith(histogram);
      this._histogram = histogram;
      const extremes = busiestAndIdle(workers, status?.summary ?? null, name => this._list.reveal(name));
      this._extremes.replaceWith(extremes);
      this._extremes = extremes;
    }
    this._list.set(workers);
    this.node.dataset.renders = String(++this._renders);
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
      cell.dataset.total = name.toLowerCase();
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

  private _model: ScoopConnection;
  private _badge = el('span', 'scoop-state');
  private _source = el('div', 'scoop-source');
  private _message = el('div', 'scoop-message');
  private _error = el('div', 'scoop-error');
  private _request = el('div', 'scoop-request');
  private _nInput = numberInput('scoop-n-input', 'Number of workers to start', 1);
  private _start = document.createElement('button');
  private _stop = document.createElement('button');
  private _scale = document.createElement('button');
  private _adapt = el('div', 'scoop-adapt');
  private _adaptBox = document.createElement('input');
  private _adaptMin = numberInput('scoop-adapt-min', 'Fewest workers', 0);
  private _adaptMax = numberInput('scoop-adapt-max', 'Most workers', 1);
  private _edited = false;
  private _sent: ISent | null = null;
  private _adaptWanted: { on: boolean; since: number } | null = null;
  private _renders = 0;
  private _totals = el('div', 'scoop-totals');
  private _jobs = el('div', 'scoop-jobs');
  private _many = el('div', 'scoop-many');
  private _heat = new HeatStrip(name => this._list.reveal(name));
  private _histogram: HTMLElement = el('div', 'scoop-histogram');
  private _extremes: HTMLElement = el('div', 'scoop-extremes');
  private _list = new WorkerList();
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
    if (this._model.phase === 'connected' && status?.request) {
      text = `SCOOP: ${status.request.text}`;
    } else if (this._model.phase === 'connected' && status?.state === 'running') {
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

/**
 * A notebook just opened may hold live SCOOP outputs saved from a kernel that has ended: once
 * its session is known (no kernel, a kernel without the extension, or the extension's kernel
 * session), those of any other kernel show their static records (see records.ts).
 */
function settleOnOpen(panel: NotebookPanel, tracker: INotebookTracker, model: ScoopConnection): void {
  void Promise.all([panel.context.ready, panel.sessionContext.ready]).then(() => {
    if (panel.isDisposed) {
      return;
    }
    if (!panel.sessionContext.session?.kernel) {
      settleRecords(panel, null);
      return;
    }
    const judge = (): boolean => {
      if (panel.isDisposed) {
        return true;
      }
      if (tracker.currentWidget !== panel) {
        return false; // the connection follows another notebook
      }
      if (model.phase === 'no-kernel' || model.phase === 'not-loaded') {
        settleRecords(panel, null);
        return true;
      }
      if (model.phase === 'connected' && model.status) {
        if (model.status.kernelSession !== null) {
          settleRecords(panel, model.status.kernelSession);
        }
        return true;
      }
      return false;
    };
    if (!judge()) {
      const onChange = () => {
        if (judge()) {
          model.changed.disconnect(onChange);
        }
      };
      model.changed.connect(onChange);
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
    const settle = (panel: NotebookPanel) => settleOnOpen(panel, tracker, model);
    tracker.forEach(settle);
    tracker.widgetAdded.connect((_, panel) => settle(panel));

    // the live task stream: one tab, fed while it is open
    let stream: MainAreaWidget<TaskStreamWidget> | null = null;
    app.commands.addCommand(CMD_STREAM, {
      label: 'Open SCOOP Task Stream',
      execute: () => {
        if (!stream || stream.isDisposed) {
          stream = new MainAreaWidget({ content: new TaskStreamWidget(model) });
          stream.id = 'scoop-task-stream-tab';
          stream.title.label = 'SCOOP Task Stream';
          stream.title.icon = scoopIcon;
          stream.title.closable = true;
          app.shell.add(stream, 'main', { mode: 'split-bottom' });
        }
        app.shell.activateById(stream.id);
      }
    });

    // this project's documentation, served by JupyterLab from the extension's static files
    const docsTracker = new WidgetTracker<MainAreaWidget<Widget>>({ namespace: 'scoop-docs' });
    app.commands.addCommand(CMD_DOCS, {
      label: 'SCOOP Documentation',
      execute: async () => {
        const open = docsTracker.find(w => !w.isDisposed);
        if (open) {
          app.shell.activateById(open.id);
          return;
        }
        const url = app.serviceManager.serverSettings.baseUrl + DOCS_PATH;
        let content: Widget;
        let found = false;
        try {
          found = (await fetch(url, { method: 'HEAD', credentials: 'same-origin' })).ok;
        } catch {
          found = false;
        }
        if (found) {
          const frame = new IFrame({
            sandbox: ['allow-same-origin', 'allow-scripts', 'allow-popups', 'allow-downloads'],
            referrerPolicy: 'same-origin'
          });
          frame.url = url;
          frame.addClass('scoop-docs-frame');
          content = frame;
        } else {
          content = new Widget();
          content.addClass('scoop-docs-missing');
          content.node.textContent =
            'The SCOOP documentation is not built into this installation. Build it from docs/ ' +
            'in the source (see the README), or read docs/ there as text.';
        }
        const widget = new MainAreaWidget({ content });
        widget.id = 'scoop-docs-tab';
        widget.title.label = 'SCOOP Documentation';
        widget.title.icon = scoopIcon;
        widget.title.closable = true;
        void docsTracker.add(widget);
        app.shell.add(widget, 'main');
        app.shell.activateById(widget.id);
      }
    });

    const panel = new ScoopPanel(model, {
      stream: () => void app.commands.execute(CMD_STREAM),
      docs: () => void app.commands.execute(CMD_DOCS)
    });
    app.shell.add(panel, 'left', { rank: 700 });
    restorer?.add(panel, PANEL_ID);

    const command = CMD_PANEL;
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
