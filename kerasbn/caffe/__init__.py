"""Trained Caffe networks brought over: Caffe's messages (proto, from a caffe.proto subset in
schema), its layers as Keras layers (caffe_layers), a deploy network and caffemodel as a Keras
model (network), and that model made servable (importer; `python -m kerasbn.caffe_import`)."""
