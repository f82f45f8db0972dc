"""The study's flagfiles and experiment sets, installed as package data `kerasbn.launch_files`
so `python -m kerasbn.launch` finds them from any directory and from a wheel."""
