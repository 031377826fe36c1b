// Live SCOOP outputs of a kernel that is gone become their static records.
//
// A dashboard or a progress bar is displayed as one bundle: a widget view plus a static
// text/html and text/plain rendering (scoop_jupyter/records.py), with output metadata naming
// the kernel process that owns the widget. A notebook saved while such a view was live (its
// cluster still running) keeps the widget view; reopened after that kernel ended, the widget
// could only say "Error displaying widget: model not found". Here the bundle is reduced to its
// static part instead: the view's last state, as the kernel would have left it.
import { NotebookPanel } from '@jupyterlab/notebook';

export const WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json';
export const RECORD_KEY = 'scoop_record';

/** What this module needs of an output model and a code cell's output list. */
interface IOutput {
  readonly data: { [mime: string]: unknown };
  readonly metadata: { [key: string]: unknown };
  toJSON(): { [key: string]: unknown };
}
interface IOutputs {
  readonly length: number;
  get(index: number): IOutput;
  set(index: number, value: any): void;
}

/** The kernel session a live SCOOP output belongs to, or null if it is not one. */
export function liveRecordSession(output: IOutput): string | null {
  const record = output.metadata?.[RECORD_KEY] as { kernel_session?: unknown } | undefined;
  if (!record || !(WIDGET_VIEW in output.data)) {
    return null;
  }
  return typeof record.kernel_session === 'string' ? record.kernel_session : '';
}

/**
 * Reduces every live SCOOP output of `panel` whose kernel is not `alive` (the kernel session
 * running now, or null for none) to its static record. Returns how many it changed. The
 * notebook stays as clean as it was: the file holds the same story, shown as it can be.
 */
export function settleRecords(panel: NotebookPanel, alive: string | null): number {
  const model = panel.content.model;
  if (!model) {
    return 0;
  }
  const wasDirty = model.dirty;
  let changed = 0;
  for (const cell of model.cells) {
    if (cell.type !== 'code') {
      continue;
    }
    const outputs = (cell as unknown as { outputs: IOutputs }).outputs;
    for (let i = 0; i < outputs.length; i++) {
      const output = outputs.get(i);
      const session = liveRecordSession(output);
      if (session === null || (alive !== null && session === alive)) {
        continue;
      }
      const json = output.toJSON();
      const data = { ...(json.data as { [mime: string]: unknown }) };
      delete data[WIDGET_VIEW];
      const metadata = { ...(json.metadata as { [key: string]: unknown }) };
      delete metadata[RECORD_KEY];
      outputs.set(i, { ...json, data, metadata });
      changed++;
    }
  }
  if (changed && !wasDirty) {
    model.dirty = false;
  }
  return changed;
}
