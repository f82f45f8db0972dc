"""Trained Caffe networks brought over: Caffe's messages (proto, from a caffe.proto subset in
schema), a deploy network and caffemodel as a Keras model of kerasbn.nn's layers (network),
and that model made servable (importer; `python -m kerasbn.caffe_import`)."""
