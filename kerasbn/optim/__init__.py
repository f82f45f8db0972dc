"""How weights move: Caffe's learning-rate policies (schedules) and its solvers as Keras
optimizers (optimizers). Below `config`, which declares their settings."""
