"""Offline dataset tools: raw faces (or the embedded generator) to TFRecord shards + manifest.json."""
