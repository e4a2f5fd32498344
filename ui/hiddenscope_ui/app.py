"""HiddenScope UI: ``streamlit run ui/hiddenscope_ui/app.py`` (env ``HIDDENSCOPE_UI_API_URL``).

One page per view; the whole view state lives in the URL (see :mod:`hiddenscope_ui.state`).
The page scripts live in ``views/``, not ``pages/``: a ``pages/`` directory beside the main
script switches Streamlit to its old multipage mode, which never runs ``st.navigation``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from hiddenscope_ui import common

HERE = Path(__file__).parent

st.set_page_config(page_title="HiddenScope", page_icon="🔬", layout="wide")

pages = {
    # the catalog is the landing page (as the original's index.html); a view link at the root
    # is forwarded to the select view
    "datasets": st.Page(HERE / "views" / "datasets.py", title="Datasets", icon="🗂️", default=True),
    "select": st.Page(HERE / "views" / "select.py", title="Select", icon="📈", url_path="select"),
    "match": st.Page(HERE / "views" / "match.py", title="Match", icon="🧩", url_path="match"),
}
common.PAGES.update(pages)
page = st.navigation([pages["datasets"], pages["select"], pages["match"]])
common.new_run(page.url_path)
page.run()
