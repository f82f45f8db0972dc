"""Offline dataset tools: raw faces (or the embedded generator) to TFRecord shards + manifest.json.

Imports kerasbn first, so TensorFlow comes in without its start-up chatter.
"""

import kerasbn  # noqa: F401
