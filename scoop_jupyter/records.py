"""Static records: a live view leaves in the notebook what it last showed.

A notebook saves outputs, not widget state (unless asked to), so a reopened notebook,
nbconvert's HTML and GitHub used to show "Error displaying widget: model not found", or the
widget's repr (``HBox(children=(IntProgress(...``), where a progress bar or a dashboard had
been.  Every live view here is displayed as one bundle that carries a static ``text/html`` and
``text/plain`` beside the widget view, under a display id; when the view ends (its map
finished, the cluster stopped) the display is updated to the static bundle alone and the
widget is closed, so what is saved is the record: the final bar and its summary, the
dashboard's last state.  A dashboard's record turns live again, with a new widget, when a new
cluster starts in the kernel (:meth:`Record.revive`), as a dask dashboard comes back with a new
cluster on its port.  Renderers that cannot show the widget (nbconvert without widget
state, GitHub) show the static part meanwhile.

A live bundle's output metadata names the kernel process that owns its widget
(``scoop_record.kernel_session``, the kernel's message-session id, which its panel comm also
reports): the lab extension turns a live bundle whose kernel is gone (a notebook saved while
its cluster ran, reopened later) into its static part, where the widget would only say "model
not found".
"""
from __future__ import annotations

import contextlib

#: output metadata key of a live bundle: ``{"kernel_session": ...}``
METADATA_KEY = "scoop_record"


def kernel_session(origin) -> str | None:
    """The id of the kernel process's message session (None outside a kernel)."""
    session = getattr(getattr(origin, "kernel", None), "session", None)
    sid = getattr(session, "session", None)
    return sid if isinstance(sid, str) and sid else None


class Record:
    """One display in one cell: live (a widget plus its static rendering) until :meth:`freeze`."""

    def __init__(self, origin, parent=None):
        self.origin = origin
        self.parent = parent if parent is not None else origin.current_parent()
        self.handle = None
        self.widget = None
        self.frozen = False

    @contextlib.contextmanager
    def _in_its_cell(self, update: bool = False, parent=None):
        """Displays from a background thread (the meta stream's) land in the record's cell.  An
        update goes out under the cell running now, if any: a front end updates every output
        with the display id whatever cell it is in, and nbclient reads only the running cell's
        messages."""
        under = getattr(self.origin, "under", None)
        if parent is None:
            parent = self.parent
            if update and getattr(self.origin, "cell_running", False):
                parent = self.origin.current_parent() or parent
        with (under(parent) if under is not None else contextlib.nullcontext()):
            yield

    @staticmethod
    def bundle(text: str, html: str, widget=None) -> dict:
        data = {"text/plain": text, "text/html": html}
        if widget is not None:
            view = widget._repr_mimebundle_().get("application/vnd.jupyter.widget-view+json")
            if view is not None:
                data["application/vnd.jupyter.widget-view+json"] = view
        return data

    def metadata(self, widget=None) -> dict:
        """A live bundle's output metadata: the kernel process that owns its widget."""
        sid = kernel_session(self.origin) if widget is not None else None
        return {METADATA_KEY: {"kernel_session": sid}} if sid else {}

    def show(self, text: str, html: str, widget=None) -> None:
        from IPython.display import display
        self.widget = widget
        with self._in_its_cell():
            self.handle = display(self.bundle(text, html, widget), raw=True, display_id=True,
                                  metadata=self.metadata(widget))

    def update(self, text: str, html: str, parent=None) -> None:
        """Refreshes the static part (the widget view stays); ``parent``: the header to send
        it under (a cell ending), else the running cell's or the record's own."""
        if self.handle is None or self.frozen:
            return
        with self._in_its_cell(update=True, parent=parent):
            self.handle.update(self.bundle(text, html, self.widget), raw=True,
                               metadata=self.metadata(self.widget))

    def revive(self, text: str, html: str, widget) -> bool:
        """Makes a frozen record live again with a new widget (a new cluster started in this
        kernel): every output showing it, in whatever cell, turns live.  False if it was never
        shown."""
        if self.handle is None:
            return False
        self.frozen = False
        self.widget = widget
        with self._in_its_cell(update=True):
            self.handle.update(self.bundle(text, html, widget), raw=True, metadata=self.metadata(widget))
        return True

    def freeze(self, text: str, html: str) -> None:
        """Replaces the display by the static record and closes the widget."""
        if self.frozen:
            return
        self.frozen = True
        if self.handle is not None:
            with self._in_its_cell(update=True):
                self.handle.update(self.bundle(text, html), raw=True)
        widget, self.widget = self.widget, None
        if widget is not None:
            for w in [widget, *getattr(widget, "children", ())]:
                try:
                    w.close()
                except Exception:
                    pass
