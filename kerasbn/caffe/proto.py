"""Caffe's network messages built at run time from `schema.CAFFE_PROTO` with protobuf (which
TensorFlow brings): no Caffe, no protoc. Reads a deploy prototxt (protobuf's text format) and
a caffemodel (the binary format) into NetParameter messages, and writes a network's files
(the tests' networks and the benchmark's)."""

import functools
import os
import re

import numpy as np

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format

from kerasbn.caffe import schema
from kerasbn.utils import errors

_TYPES = {name: getattr(descriptor_pb2.FieldDescriptorProto, "TYPE_" + name.upper())
          for name in ("double", "float", "int32", "int64", "uint32", "uint64", "bool",
                       "string", "bytes")}
_LABELS = {"optional": descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
           "repeated": descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED}
_TOKENS = re.compile(r'"[^"]*"|[A-Za-z_][\w.]*|-?[\d.]+(?:e-?\d+)?|[{}\[\]=;]')


def _file_descriptor(text):
    """The FileDescriptorProto of proto2 `text` in the subset `schema` writes: messages with
    optional/repeated fields, [default = ...] and [packed = true], and enums."""
    tokens = _TOKENS.findall(text)
    proto = descriptor_pb2.FileDescriptorProto(name="kerasbn_caffe.proto", package="caffe",
                                               syntax="proto2")
    enums = set()
    position = 0

    def take(expected=None):
        nonlocal position
        token = tokens[position]
        position += 1
        if expected is not None and token != expected:
            raise ValueError(f"caffe schema: expected {expected!r}, got {token!r}")
        return token

    def enum(into):
        name = take()
        enums.add(name)
        value = into.add(name=name)
        take("{")
        while tokens[position] != "}":
            label = take()
            take("=")
            value.value.add(name=label, number=int(take()))
            take(";")
        take("}")

    def message_type(into):
        msg = into.add(name=take())
        take("{")
        while tokens[position] != "}":
            if tokens[position] == "enum":
                take()
                enum(msg.enum_type)
                continue
            label, kind, name = take(), take(), take()
            take("=")
            field = msg.field.add(name=name, number=int(take()), label=_LABELS[label])
            if kind in _TYPES:
                field.type = _TYPES[kind]
            else:
                field.type_name = kind  # resolved below, once every enum is known
            if tokens[position] == "[":
                take()
                while tokens[position] != "]":
                    option = take()
                    take("=")
                    value = take().strip('"')
                    if option == "default":
                        field.default_value = value
                    elif option == "packed":
                        field.options.packed = value == "true"
                    if tokens[position] == ",":
                        take()
                take("]")
            take(";")
        take("}")

    while position < len(tokens):
        kind = take()
        (enum if kind == "enum" else message_type)(
            proto.enum_type if kind == "enum" else proto.message_type)
    for msg in proto.message_type:
        local = {e.name for e in msg.enum_type}
        for field in msg.field:
            if field.type_name:
                field.type = (descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                              if field.type_name in enums else
                              descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
                field.type_name = (f".caffe.{msg.name}.{field.type_name}"
                                   if field.type_name in local else
                                   f".caffe.{field.type_name}")
    return proto


@functools.cache
def messages():
    """{message name: class} of Caffe's messages."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor(schema.CAFFE_PROTO))
    names = re.findall(r"^message (\w+)", schema.CAFFE_PROTO, re.M)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
            for name in names}


def read_prototxt(path):
    """The NetParameter of the text prototxt at `path`; a syntax error names its line and
    column. Fields this schema does not declare (other forks' layer parameters) are
    skipped."""
    net = messages()["NetParameter"]()
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), net, allow_unknown_field=True)
    except OSError as e:
        raise errors.UserError(f"--prototxt={path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise errors.UserError(f"--prototxt={path} is not a text prototxt (is it the "
                               "caffemodel?); give the deploy .prototxt") from None
    except text_format.ParseError as e:
        reason = str(e).split(" : ", 1)[-1]
        if reason.startswith("'") and "': " in reason:  # the line's text, then the reason
            reason = reason.rsplit("': ", 1)[1]
        raise errors.UserError(f"--prototxt={path}: syntax error at line {e.GetLine()}, "
                               f"column {e.GetColumn()}: {reason}") from None
    return net


def read_caffemodel(path):
    """The NetParameter of the binary caffemodel at `path`."""
    net = messages()["NetParameter"]()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise errors.UserError(f"--caffemodel={path}: {e.strerror}") from None
    try:
        net.ParseFromString(data)
    except message.DecodeError:
        raise errors.UserError(f"--caffemodel={path} is truncated or not a caffemodel "
                               f"({len(data)} bytes that do not parse as Caffe's "
                               "NetParameter); copy it again") from None
    if not net.layer and not net.layers:
        raise errors.UserError(f"--caffemodel={path} holds no layers; is it a caffemodel?")
    return net


def write_net(directory, name, text, weights, v1=False):
    """(prototxt path, caffemodel path) in `directory` of deploy network `text` and `weights`
    ({layer name: [arrays in Caffe's layouts]}), in today's format or, with `v1`, the legacy
    `layers`."""
    net = messages()["NetParameter"]()
    for layer_name, arrays in weights.items():
        layer = (net.layers if v1 else net.layer).add(name=layer_name)
        for array in arrays:
            blob = layer.blobs.add()
            blob.shape.dim.extend(np.shape(array))
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    prototxt, caffemodel = (os.path.join(directory, f"{name}.{ext}")
                            for ext in ("prototxt", "caffemodel"))
    with open(prototxt, "w", encoding="utf-8") as f:
        f.write(text)
    with open(caffemodel, "wb") as f:
        f.write(net.SerializeToString())
    return prototxt, caffemodel
