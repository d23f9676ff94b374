"""Chapter 01's methods, registered once: every notebook, test and table that lists the methods reads this."""

from __future__ import annotations

#: The six methods in the chapter's teaching order, and the notebook that teaches each.
NOTEBOOKS = {
    "prompt_tuning": "02_prompt_tuning.ipynb",
    "p_tuning": "03_p_tuning.ipynb",
    "prefix_tuning": "04_prefix_tuning.ipynb",
    "lora": "05_lora.ipynb",
    "ia3": "06_ia3.ipynb",
    "adalora": "07_adalora.ipynb",
}
