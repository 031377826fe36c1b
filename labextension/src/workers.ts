// The panel's per-worker views, built to stay usable at 1,000 workers: a heat strip (one cell
// per worker), a histogram of the tasks each worker holds, the busiest and the idle workers,
// and a virtualised list that only builds the rows in view.
import { ISummary, IWorker } from './connection';

export const ROW_HEIGHT = 52; // px, fixed: the list's scroll height is rows x ROW_HEIGHT
const OVERSCAN = 6; // rows built above and below the visible ones
const CELL = 7; // px per worker in the heat strip (plus 1 px gap), smaller for many workers
const MIN_CELL = 3;
const HEAT_HEIGHT = 120; // px the strip aims to stay within
const BUSIEST = 5;
const IDLE_NAMES = 12;
// held tasks (running + queued) per worker: the histogram's bins, by lower bound
const BINS: [number, string][] = [
  [0, '0'],
  [1, '1'],
  [2, '2'],
  [3, '3–4'],
  [5, '5–8'],
  [9, '9–16'],
  [17, '17+']
];

export function el<K extends keyof HTMLElementTagNameMap>(
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

export function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** Binary units, as the kernel's dashboard and status print them. */
export function fmtBytes(n: number): string {
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

function held(w: IWorker): number {
  return w.running + w.queued;
}

/** Builds one worker row (absolutely placed by the list). */
function workerRow(w: IWorker): HTMLDivElement {
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
  bar.style.width = `${loadPercent(w)}%`;
  track.title = `${w.state}, ${w.cpu.toFixed(0)}% CPU`;
  track.append(bar);
  const stats = el('div', 'scoop-worker-stats');
  stats.append(
    el('span', '', `${fmtInt(w.done)} done · ${w.running} running · ${w.queued} queued`),
    el('span', '', `${w.cpu.toFixed(0)}% cpu · ${fmtBytes(w.mem)}`)
  );
  row.append(top, track, stats);
  return row;
}

/**
 * A scrollable list of worker rows that builds only the rows in view (plus a few), so a
 * status of 1,000 workers costs a dozen rows of DOM, not a thousand.
 */
export class WorkerList {
  readonly node = el('div', 'scoop-workers');

  constructor() {
    this._spacer.style.position = 'relative';
    this.node.append(this._spacer);
    this.node.addEventListener('scroll', () => this._draw(), { passive: true });
  }

  get workers(): IWorker[] {
    return this._workers;
  }

  set(workers: IWorker[]): void {
    this._workers = workers;
    this._spacer.style.height = `${workers.length * ROW_HEIGHT}px`;
    this._draw();
  }

  /** Scrolls the row of this worker into view. */
  reveal(name: string): void {
    const i = this._workers.findIndex(w => w.name === name);
    if (i >= 0) {
      this.node.scrollTop = Math.max(0, i * ROW_HEIGHT - this.node.clientHeight / 2);
      this._draw();
    }
  }

  /** Rebuilds the visible rows (a status comes at most 10 times a second). */
  private _draw(): void {
    const n = this._workers.length;
    const view = this.node.clientHeight || 400;
    const first = Math.max(0, Math.floor(this.node.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(n, Math.ceil((this.node.scrollTop + view) / ROW_HEIGHT) + OVERSCAN);
    const rows: HTMLElement[] = [];
    for (let i = first; i < last; i++) {
      const row = workerRow(this._workers[i]);
      row.style.top = `${i * ROW_HEIGHT}px`;
      rows.push(row);
    }
    this._spacer.replaceChildren(...rows);
  }

  private _workers: IWorker[] = [];
  private _spacer = el('div', 'scoop-workers-spacer');
}

/** One cell per worker, coloured by state; hover names it, a click shows its row. */
export class HeatStrip {
  readonly node = el('div', 'scoop-heat');

  constructor(onPick: (name: string) => void) {
    this._canvas.className = 'scoop-heat-canvas';
    this.node.append(this._canvas);
    this._canvas.addEventListener('mousemove', ev => {
      const w = this._at(ev);
      this._canvas.title = w
        ? `${w.name} · ${w.state} · ${w.running} running, ${w.queued} queued · ${w.cpu.toFixed(0)}% cpu`
        : '';
    });
    this._canvas.addEventListener('click', ev => {
      const w = this._at(ev);
      if (w) {
        onPick(w.name);
      }
    });
  }

  set(workers: IWorker[], width: number): void {
    this._workers = workers;
    // cells as large as fit the width and about HEAT_HEIGHT px for all workers
    const fit = Math.floor(Math.sqrt((width * HEAT_HEIGHT) / Math.max(1, workers.length))) - 1;
    const cell = Math.max(MIN_CELL, Math.min(CELL, fit));
    this._cell = cell;
    const per = Math.max(1, Math.floor(width / (cell + 1)));
    this._per = per;
    const rows = Math.ceil(workers.length / per);
    const dpr = window.devicePixelRatio || 1;
    const w = per * (cell + 1);
    const h = Math.max(1, rows * (cell + 1));
    this._canvas.style.width = `${w}px`;
    this._canvas.style.height = `${h}px`;
    this._canvas.width = Math.round(w * dpr);
    this._canvas.height = Math.round(h * dpr);
    const ctx = this._canvas.getContext('2d');
    if (!ctx) {
      return;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const style = getComputedStyle(this.node);
    const colours: { [state: string]: string } = {
      busy: style.getPropertyValue('--jp-brand-color1').trim() || '#1976d2',
      idle: style.getPropertyValue('--jp-layout-color3').trim() || '#bdbdbd',
      joining: style.getPropertyValue('--jp-warn-color2').trim() || '#ffb74d',
      lost: style.getPropertyValue('--jp-error-color1').trim() || '#d32f2f'
    };
    ctx.clearRect(0, 0, w, h);
    workers.forEach((wk, i) => {
      ctx.fillStyle = colours[wk.state] ?? colours.idle;
      // a busy worker holding more than it runs (a queue) is drawn full, the others lighter
      ctx.globalAlpha = wk.state === 'busy' ? Math.min(1, 0.55 + 0.15 * held(wk)) : 1;
      ctx.fillRect((i % per) * (cell + 1), Math.floor(i / per) * (cell + 1), cell, cell);
    });
    ctx.globalAlpha = 1;
  }

  private _at(ev: MouseEvent): IWorker | undefined {
    const r = this._canvas.getBoundingClientRect();
    const col = Math.floor((ev.clientX - r.left) / (this._cell + 1));
    const row = Math.floor((ev.clientY - r.top) / (this._cell + 1));
    if (col < 0 || col >= this._per) {
      return undefined;
    }
    return this._workers[row * this._per + col];
  }

  private _canvas = document.createElement('canvas');
  private _workers: IWorker[] = [];
  private _per = 1;
  private _cell = CELL;
}

/** A small bar chart of workers: by CPU band when the kernel's snapshot model gives its
 * histogram (``summary.cpu_histogram``), else by the tasks each one holds. */
export function loadHistogram(workers: IWorker[], summary: ISummary | null): HTMLElement {
  let counts: number[];
  let labels: string[];
  const node = el('div', 'scoop-histogram');
  if (summary && summary.cpu_histogram.length) {
    counts = summary.cpu_histogram;
    const band = 100 / counts.length;
    labels = counts.map((_, i) => `${Math.round(i * band)}%`);
    node.title = 'Workers by CPU use, in bands of ' + `${Math.round(band)} %`;
  } else {
    const live = workers.filter(w => w.state === 'busy' || w.state === 'idle');
    counts = BINS.map(() => 0);
    for (const w of live) {
      const h = held(w);
      let b = BINS.length - 1;
      while (b > 0 && h < BINS[b][0]) {
        b--;
      }
      counts[b]++;
    }
    labels = BINS.map(([, label]) => label);
    node.title = 'Workers by the tasks they hold (running + queued)';
  }
  const most = Math.max(1, ...counts);
  labels.forEach((label, i) => {
    const col = el('div', 'scoop-histogram-col');
    const bar = el('div', 'scoop-histogram-bar');
    bar.style.height = `${Math.round((40 * counts[i]) / most)}px`;
    col.append(
      el('div', 'scoop-histogram-count', counts[i] ? fmtInt(counts[i]) : ''),
      bar,
      el('div', 'scoop-histogram-label', label)
    );
    col.dataset.bin = label;
    col.dataset.count = String(counts[i]);
    node.append(col);
  });
  return node;
}

/** The busiest workers and the idle ones, by name: the kernel's snapshot model's choice when
 * it gives one (``summary``), else the most tasks held, then CPU. */
export function busiestAndIdle(
  workers: IWorker[],
  summary: ISummary | null,
  onPick: (name: string) => void
): HTMLElement {
  const node = el('div', 'scoop-extremes');
  const byName = new Map(workers.map(w => [w.name, w]));
  const pick = (names: string[]) =>
    names.map(n => byName.get(n)).filter((w): w is IWorker => w !== undefined);
  const busy = summary
    ? pick(summary.busiest)
    : workers
        .filter(w => w.state === 'busy')
        .sort((a, b) => held(b) - held(a) || b.cpu - a.cpu)
        .slice(0, BUSIEST);
  const idleAll = workers.filter(w => w.state === 'idle');
  const idle = summary ? pick(summary.idle) : idleAll;
  const link = (w: IWorker, text: string) => {
    const a = el('button', 'scoop-worker-link', text);
    a.addEventListener('click', () => onPick(w.name));
    return a;
  };
  const busiest = el('div', 'scoop-busiest');
  busiest.append(el('span', 'scoop-extremes-label', 'Busiest '));
  if (busy.length) {
    busy.forEach(w => busiest.append(link(w, `${w.name} (${held(w)})`)));
  } else {
    busiest.append(el('span', 'scoop-extremes-none', 'none'));
  }
  const idleNode = el('div', 'scoop-idle');
  const nIdle = summary?.states.idle ?? idleAll.length;
  idleNode.append(el('span', 'scoop-extremes-label', `Idle ${fmtInt(nIdle)} `));
  idle.slice(0, IDLE_NAMES).forEach(w => idleNode.append(link(w, w.name)));
  const shown = Math.min(idle.length, IDLE_NAMES);
  if (nIdle > shown) {
    idleNode.append(el('span', 'scoop-extremes-none', `+${fmtInt(nIdle - shown)}`));
  }
  node.append(busiest, idleNode);
  return node;
}
