"""Where the prebuilt JupyterLab extension lives inside the package.

Used by ``jupyter labextension develop``; regular installs get the files through
the wheel's shared-data (``share/jupyter/labextensions/scoop-jupyter``).
"""


def _jupyter_labextension_paths():
    # "src" is relative to the scoop_jupyter package; it is the npm build's
    # outputDir (see labextension/package.json).
    return [{"src": "labextension", "dest": "scoop-jupyter"}]
