// The live task stream: one row per worker, one bar per finished task or map chunk, coloured by
// function, in a main-area tab.  Tasks arrive in batches (a few times a second) into columnar
// typed arrays; the canvas is redrawn at most once per animation frame, and bars thinner than a
// pixel merge with the previous bar of their row, so 10,000 tasks a second stay cheap to draw.
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { ITaskBatch, ScoopConnection } from './connection';
import { el } from './workers';

const PALETTE = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#17becf',
  '#bcbd22',
  '#7f7f7f',
  '#aec7e8'
];
const FAILED = '#d62728';
const MAX_TASKS = 1_000_000; // the oldest half goes beyond this
const LIVE_SPAN = 20; // seconds shown while following the newest tasks
const LEFT = 56; // px for the worker names
const AXIS = 22; // px for the time axis
const MIN_ROW = 6;
const MAX_ROW = 24;

function naturalKey(name: string): (string | number)[] {
  return name.split(/(\d+)/).map((p, i) => (i % 2 ? parseInt(p, 10) : p));
}

function naturalCompare(a: string, b: string): number {
  const ka = naturalKey(a);
  const kb = naturalKey(b);
  for (let i = 0; i < Math.min(ka.length, kb.length); i++) {
    if (ka[i] !== kb[i]) {
      return ka[i] < kb[i] ? -1 : 1;
    }
  }
  return ka.length - kb.length;
}

function fmtSeconds(s: number): string {
  if (s === 0) {
    return '0 s';
  }
  if (s >= 100) {
    return `${s.toFixed(0)} s`;
  }
  if (s >= 1) {
    return `${s.toFixed(2)} s`;
  }
  if (s >= 1e-3) {
    return `${(s * 1e3).toFixed(1)} ms`;
  }
  return `${(s * 1e6).toFixed(0)} µs`;
}

/** Round tick steps (1, 2, 5 x 10^k) about 90 px apart. */
function tickStep(span: number, width: number): number {
  const target = (span * 90) / Math.max(width, 1);
  for (let k = -6; k < 7; k++) {
    for (const m of [1, 2, 5]) {
      const step = m * 10 ** k;
      if (step >= target) {
        return step;
      }
    }
  }
  return 1e6;
}

/** Columnar store of finished tasks (times relative to the first task seen). */
class TaskStore {
  count = 0;
  t0 = 0;
  tEnd = 0; // newest end
  worker = new Int32Array(1024);
  name = new Int32Array(1024);
  start = new Float64Array(1024);
  dur = new Float64Array(1024);
  inputs = new Int32Array(1024);
  group = new Int32Array(1024);
  ok = new Uint8Array(1024);
  workers: string[] = []; // global worker index -> name
  names: string[] = [];
  private _workerIndex = new Map<string, number>();
  private _nameIndex = new Map<string, number>();

  clear(): void {
    this.count = 0;
    this.t0 = 0;
    this.tEnd = 0;
    this.workers = [];
    this.names = [];
    this._workerIndex.clear();
    this._nameIndex.clear();
  }

  add(batch: ITaskBatch): boolean {
    if (batch.reset) {
      this.clear();
    }
    const wmap = batch.workers.map(w => this._intern(this._workerIndex, this.workers, w));
    const nmap = batch.names.map(n => this._intern(this._nameIndex, this.names, n));
    const added = this.workers.length;
    this._reserve(this.count + batch.tasks.length);
    for (const [w, n, start, dur, inputs, ok, group] of batch.tasks) {
      if (this.count === 0 && this.t0 === 0) {
        this.t0 = start;
      }
      const i = this.count++;
      this.worker[i] = wmap[w] ?? 0;
      this.name[i] = nmap[n] ?? 0;
      this.start[i] = start - this.t0;
      this.dur[i] = dur;
      this.inputs[i] = inputs;
      this.ok[i] = ok ? 1 : 0;
      this.group[i] = group || 0;
      this.tEnd = Math.max(this.tEnd, start - this.t0 + dur);
    }
    return added !== 0;
  }

  private _intern(index: Map<string, number>, list: string[], key: string): number {
    let i = index.get(key);
    if (i === undefined) {
      i = list.length;
      list.push(key);
      index.set(key, i);
    }
    return i;
  }

  private _reserve(n: number): void {
    if (n > MAX_TASKS) {
      this._dropOldest(Math.max(this.count - MAX_TASKS / 2, n - MAX_TASKS));
    }
    if (n <= this.worker.length) {
      return;
    }
    const size = Math.min(Math.max(n, this.worker.length * 2), MAX_TASKS);
    const grow = <T extends Int32Array | Float64Array | Uint8Array>(a: T, make: (k: number) => T): T => {
      const b = make(size);
      b.set(a.subarray(0, this.count));
      return b;
    };
    this.worker = grow(this.worker, k => new Int32Array(k));
    this.name = grow(this.name, k => new Int32Array(k));
    this.start = grow(this.start, k => new Float64Array(k));
    this.dur = grow(this.dur, k => new Float64Array(k));
    this.inputs = grow(this.inputs, k => new Int32Array(k));
    this.group = grow(this.group, k => new Int32Array(k));
    this.ok = grow(this.ok, k => new Uint8Array(k));
  }

  private _dropOldest(k: number): void {
    k = Math.min(this.count, Math.max(0, Math.floor(k)));
    for (const a of [this.worker, this.name, this.start, this.dur, this.inputs, this.group, this.ok]) {
      a.copyWithin(0, k, this.count);
    }
    this.count -= k;
  }
}

/** Main-area widget: the live task stream of the active notebook's cluster. */
export class TaskStreamWidget extends Widget {
  constructor(model: ScoopConnection) {
    super();
    this._model = model;
    this.id = 'scoop-task-stream';
    this.addClass('scoop-task-stream');
    this.title.label = 'SCOOP Task Stream';
    this.title.closable = true;

    const bar = el('div', 'scoop-ts-toolbar');
    this._live.className = 'jp-mod-styled scoop-ts-live';
    this._live.textContent = 'Live';
    this._live.title = `Follow the newest tasks (the last ${LIVE_SPAN} s)`;
    this._fit.className = 'jp-mod-styled scoop-ts-fit';
    this._fit.textContent = 'All';
    this._fit.title = 'Show every task received';
    this._clear.className = 'jp-mod-styled scoop-ts-clear';
    this._clear.textContent = 'Clear';
    bar.append(this._live, this._fit, this._clear, this._summary, this._legend);
    const help = el(
      'span',
      'scoop-ts-help',
      'wheel: zoom · drag: pan · double-click: live'
    );
    bar.append(help);
    this._area.append(this._canvas, this._tip);
    this._tip.hidden = true;
    this.node.append(bar, this._area, this._empty);

    this._live.addEventListener('click', () => this._setMode('live'));
    this._fit.addEventListener('click', () => this._setMode('all'));
    this._clear.addEventListener('click', () => {
      this._store.clear();
      this._legendNames = -1;
      this._setMode('live');
    });
    this._canvas.addEventListener('wheel', ev => this._onWheel(ev), { passive: false });
    this._canvas.addEventListener('mousedown', ev => this._onDown(ev));
    this._canvas.addEventListener('mousemove', ev => this._onHover(ev));
    this._canvas.addEventListener('mouseleave', () => {
      this._tip.hidden = true;
    });
    this._canvas.addEventListener('dblclick', () => this._setMode('live'));
    model.tasks.connect(this._onTasks, this);
    model.changed.connect(this._onChanged, this);
  }

  /** Visible time window, in seconds after the first task (for tests and the toolbar). */
  get view(): [number, number] {
    return [this._v0, this._v1];
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._model.tasks.disconnect(this._onTasks, this);
    this._model.changed.disconnect(this._onChanged, this);
    this._model.setStream(false);
    window.cancelAnimationFrame(this._frame);
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    this._model.setStream(true);
    this._schedule();
  }

  protected onResize(msg: Message): void {
    this._schedule();
  }

  protected onAfterShow(msg: Message): void {
    this._schedule();
  }

  private _onChanged(): void {
    // a new kernel (or notebook) starts a new stream
    if (this._model.phase !== 'connected' && this._store.count) {
      this._schedule();
    }
  }

  private _onTasks(_: ScoopConnection, batch: ITaskBatch): void {
    if (batch.reset && this._store.count) {
      this._legendNames = -1;
    }
    if (this._store.add(batch)) {
      this._sortRows();
    }
    this._received += batch.tasks.length;
    this._schedule();
  }

  private _sortRows(): void {
    const names = this._store.workers;
    const order = names.map((_, i) => i).sort((a, b) => naturalCompare(names[a], names[b]));
    this._rowOf = new Int32Array(names.length);
    order.forEach((w, row) => (this._rowOf[w] = row));
    this._rowNames = order.map(i => names[i]);
  }

  private _setMode(mode: 'live' | 'all'): void {
    this._mode = mode;
    this._schedule();
  }

  private _schedule(): void {
    if (!this._frame && this.isVisible) {
      this._frame = window.requestAnimationFrame(() => {
        this._frame = 0;
        this._draw();
      });
    }
  }

  private _plotWidth(): number {
    return Math.max(10, this._area.clientWidth - LEFT - 8);
  }

  private _xOf(t: number): number {
    return LEFT + ((t - this._v0) / Math.max(1e-9, this._v1 - this._v0)) * this._plotWidth();
  }

  private _tOf(x: number): number {
    return this._v0 + ((x - LEFT) / this._plotWidth()) * (this._v1 - this._v0);
  }

  private _onWheel(ev: WheelEvent): void {
    ev.preventDefault();
    const r = this._canvas.getBoundingClientRect();
    const t = this._tOf(ev.clientX - r.left);
    const factor = Math.exp(Math.max(-1, Math.min(1, ev.deltaY / 300)));
    const span = Math.max(1e-5, (this._v1 - this._v0) * factor);
    const k = (t - this._v0) / Math.max(1e-9, this._v1 - this._v0);
    this._v0 = t - k * span;
    this._v1 = this._v0 + span;
    this._mode = 'fixed';
    this._schedule();
  }

  private _onDown(ev: MouseEvent): void {
    if (ev.button !== 0) {
      return;
    }
    const x0 = ev.clientX;
    const v0 = this._v0;
    const v1 = this._v1;
    const perPx = (v1 - v0) / this._plotWidth();
    const move = (e: MouseEvent) => {
      const dt = (x0 - e.clientX) * perPx;
      if (dt !== 0) {
        this._mode = 'fixed';
        this._v0 = v0 + dt;
        this._v1 = v1 + dt;
        this._schedule();
      }
    };
    const up = () => {
      window.removeEventListener('mousemove', move);
      window.removeEventListener('mouseup', up);
    };
    window.addEventListener('mousemove', move);
    window.addEventListener('mouseup', up);
  }

  /** The task under the mouse: its row, then the task of that row covering the time (the
   * newest first), with 2 px of slack for thin bars. */
  private _onHover(ev: MouseEvent): void {
    const s = this._store;
    const r = this._canvas.getBoundingClientRect();
    const x = ev.clientX - r.left;
    const y = ev.clientY - r.top;
    const row = Math.floor((y - AXIS) / this._rowH);
    if (x < LEFT || row < 0 || row >= this._rowNames.length) {
      this._tip.hidden = true;
      return;
    }
    const t = this._tOf(x);
    const slack = (2 * (this._v1 - this._v0)) / this._plotWidth();
    let hit = -1;
    for (let i = s.count - 1; i >= 0; i--) {
      if (
        this._rowOf[s.worker[i]] === row &&
        s.start[i] - slack <= t &&
        t <= s.start[i] + s.dur[i] + slack
      ) {
        hit = i;
        break;
      }
    }
    if (hit < 0) {
      this._tip.hidden = true;
      return;
    }
    const inputs = s.inputs[hit];
    const lines = [
      `${s.names[s.name[hit]]} on ${s.workers[s.worker[hit]]}${s.ok[hit] ? '' : ' — failed'}`,
      `${inputs === 1 ? '1 input' : `${inputs.toLocaleString('en-US')} inputs (a map chunk)`}` +
        (s.group[hit] ? ` · task group ${s.group[hit]}` : ''),
      `took ${fmtSeconds(s.dur[hit])} · started at +${fmtSeconds(s.start[hit])}`
    ];
    this._tip.replaceChildren(...lines.map(l => el('div', '', l)));
    this._tip.hidden = false;
    this._tip.dataset.task = String(hit);
    const left = Math.min(x + 12, this._area.clientWidth - 260);
    this._tip.style.left = `${Math.max(0, left)}px`;
    this._tip.style.top = `${y + 14}px`;
  }

  private _draw(): void {
    const began = performance.now();
    const s = this._store;
    const width = this._area.clientWidth;
    const height = this._area.clientHeight;
    this._empty.hidden = s.count > 0;
    this._empty.textContent =
      this._model.phase === 'connected'
        ? 'No finished tasks yet: run a map in the notebook and its tasks appear here as they end.'
        : 'Connecting to the active notebook’s kernel (run %load_ext scoop_jupyter there)…';
    if (width <= 0 || height <= 0) {
      return;
    }
    const rows = Math.max(1, this._rowNames.length);
    this._rowH = Math.max(MIN_ROW, Math.min(MAX_ROW, Math.floor((height - AXIS - 4) / rows)));
    if (this._mode === 'live') {
      this._v1 = Math.max(s.tEnd, 1e-3);
      this._v0 = Math.max(0, this._v1 - LIVE_SPAN);
      if (this._v1 - this._v0 < 1e-3) {
        this._v0 = this._v1 - 1;
      }
    } else if (this._mode === 'all') {
      this._v0 = 0;
      this._v1 = Math.max(s.tEnd, 1e-3);
    }
    const dpr = window.devicePixelRatio || 1;
    if (this._canvas.width !== Math.round(width * dpr) || this._canvas.height !== Math.round(height * dpr)) {
      this._canvas.width = Math.round(width * dpr);
      this._canvas.height = Math.round(height * dpr);
      this._canvas.style.width = `${width}px`;
      this._canvas.style.height = `${height}px`;
    }
    const ctx = this._canvas.getContext('2d');
    if (!ctx) {
      return;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(this.node);
    const fg = style.getPropertyValue('--jp-ui-font-color2').trim() || '#757575';
    const grid = style.getPropertyValue('--jp-border-color2').trim() || '#e0e0e0';
    ctx.font = `11px ${style.getPropertyValue('--jp-ui-font-family') || 'sans-serif'}`;

    // the time axis and its grid
    const plotW = this._plotWidth();
    const span = this._v1 - this._v0;
    const step = tickStep(span, plotW);
    ctx.fillStyle = fg;
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'center';
    const plotBottom = AXIS + rows * this._rowH;
    for (let v = Math.ceil(this._v0 / step) * step; v <= this._v1; v += step) {
      const x = Math.round(this._xOf(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, AXIS - 4);
      ctx.lineTo(x, plotBottom);
      ctx.stroke();
      ctx.fillText(fmtSeconds(Math.abs(v) < step / 2 ? 0 : v).replace('.00 s', ' s'), x, AXIS / 2);
    }
    // worker names
    ctx.textAlign = 'right';
    const every = Math.ceil(12 / this._rowH); // label every k-th row when rows are thin
    this._rowNames.forEach((name, row) => {
      if (row % every === 0) {
        ctx.fillText(name, LEFT - 6, AXIS + row * this._rowH + this._rowH / 2);
      }
    });

    // the bars: per row, a bar that falls in the pixel column the previous one filled merges
    const lastX = new Float64Array(rows).fill(-1);
    const lastC = new Int32Array(rows).fill(-1);
    const barH = Math.max(1, this._rowH - (this._rowH > 8 ? 2 : 1));
    const scale = plotW / Math.max(1e-9, span);
    const failed = PALETTE.length;
    const colours = [...PALETTE, FAILED];
    let drawn = 0;
    ctx.save();
    ctx.beginPath();
    ctx.rect(LEFT, AXIS, plotW, plotBottom - AXIS);
    ctx.clip();
    let current = -1;
    for (let i = 0; i < s.count; i++) {
      const st = s.start[i];
      const en = st + s.dur[i];
      if (en < this._v0 || st > this._v1) {
        continue;
      }
      const row = this._rowOf[s.worker[i]];
      const c = s.ok[i] ? s.name[i] % PALETTE.length : failed;
      let x0 = LEFT + (st - this._v0) * scale;
      let x1 = LEFT + (en - this._v0) * scale;
      if (x1 - x0 < 1) {
        x0 = Math.floor(x0);
        x1 = x0 + 1;
        if (lastX[row] >= x1 || (lastX[row] >= x0 + 0.5 && lastC[row] === c)) {
          continue; // its pixel is drawn already: merged into the previous bar of this row
        }
      }
      if (x0 < LEFT - 1) {
        x0 = LEFT - 1;
      }
      lastX[row] = x1;
      lastC[row] = c;
      if (c !== current) {
        ctx.fillStyle = colours[c];
        current = c;
      }
      // a gap of a pixel between neighbours wide enough to show it
      ctx.fillRect(x0, AXIS + row * this._rowH, Math.max(1, x1 - x0 - (x1 - x0 > 4 ? 1 : 0)), barH);
      drawn++;
    }
    ctx.restore();
    this.node.dataset.tasks = String(s.count);
    this.node.dataset.drawn = String(drawn);
    this.node.dataset.rows = String(this._rowNames.length);
    this.node.dataset.mode = this._mode;
    this.node.dataset.drawMs = (performance.now() - began).toFixed(1);
    this.node.dataset.received = String(this._received);
    this._summary.textContent =
      `${s.count.toLocaleString('en-US')} tasks on ${this._rowNames.length} workers · ` +
      `showing ${fmtSeconds(span)}${this._mode === 'live' ? ' (live)' : ''}`;
    this._live.classList.toggle('scoop-ts-on', this._mode === 'live');
    this._fit.classList.toggle('scoop-ts-on', this._mode === 'all');
    this._renderLegend();
  }

  private _renderLegend(): void {
    const names = this._store.names;
    if (names.length === this._legendNames) {
      return;
    }
    this._legendNames = names.length;
    this._legend.replaceChildren(
      ...names.slice(0, PALETTE.length).map((n, i) => {
        const item = el('span', 'scoop-ts-legend-item');
        const swatch = el('span', 'scoop-ts-swatch');
        swatch.style.background = PALETTE[i];
        item.append(swatch, document.createTextNode(n));
        return item;
      })
    );
  }

  private _model: ScoopConnection;
  private _store = new TaskStore();
  private _rowOf = new Int32Array(0);
  private _rowNames: string[] = [];
  private _rowH = MAX_ROW;
  private _v0 = 0;
  private _v1 = 1;
  private _mode: 'live' | 'all' | 'fixed' = 'live';
  private _frame = 0;
  private _received = 0;
  private _legendNames = -1;
  private _canvas = document.createElement('canvas');
  private _area = el('div', 'scoop-ts-area');
  private _tip = el('div', 'scoop-ts-tip');
  private _empty = el('div', 'scoop-ts-empty');
  private _summary = el('span', 'scoop-ts-summary');
  private _legend = el('span', 'scoop-ts-legend');
  private _live = document.createElement('button');
  private _fit = document.createElement('button');
  private _clear = document.createElement('button');
}
