"""Sphinx configuration of the SCOOP-Jupyter documentation (build: python docs/build.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

project = "SCOOP-Jupyter"
author = "SCOOP-Jupyter developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "none"
html_theme = "alabaster"
html_title = "SCOOP-Jupyter"
html_static_path = []
# everything is served offline from the JupyterLab extension: no fonts or scripts from elsewhere
html_theme_options = {"font_family": "sans-serif", "head_font_family": "sans-serif",
                      "code_font_family": "monospace"}
