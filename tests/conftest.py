"""Suite-wide setup.

A suite started in the background by a script (``bash .ci/run &``, ``nohup``) inherits SIGINT
ignored, and every process it starts would inherit that too: the tests that press Ctrl+C on a
``mergesearch`` child (SIGINT during a search, stopping the dashboard) would then wait for a
process that never hears it. A caught signal resets to the default at ``exec``, so catching it
here gives every child a live Ctrl+C again.
"""

import signal

signal.signal(signal.SIGINT, signal.default_int_handler)
