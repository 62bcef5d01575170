"""The demo tests read only local files: Hugging Face libraries must not reach for the Hub.

Set here, before pytest imports the test modules, because ``datasets`` and ``transformers``
read these variables when they are first imported.
"""

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
