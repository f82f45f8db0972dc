"""A run on disk: its directory and lock, its stored config, its checkpoints and the network
they restore into, the names its export writes, and what its test records say. Training
writes runs; evaluation, serving, analysis and the launcher read them; nothing here imports
those."""
