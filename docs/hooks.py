"""MkDocs hook: render Sphinx roles (:func:`x`) in docstrings as plain code."""

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(<code>)~?")


def on_page_content(html, **kwargs):
    """Drop the role prefix before inline code."""
    return _ROLE.sub(r"\1", html)
