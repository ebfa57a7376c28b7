"""Compiles the stand-in's .proto files and gives their message classes and service methods.

protoc (grpc_tools) writes a descriptor set into OUT_DIR; the classes are built from it at run
time, so there is no generated Python code to import.
"""
import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")
FILES = ["api.proto", "task_command_router.proto"]
SERVICES = ["modal.client.ModalClient", "modal.task_command_router.TaskCommandRouter"]


def _well_known_dir():
    import grpc_tools
    return os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")


def compile_protos(out_dir):
    """Runs protoc; returns the path of the descriptor set it wrote."""
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "standin.pb")
    args = ["protoc", "-I" + PROTO_DIR, "-I" + _well_known_dir(), "--include_imports",
            "--descriptor_set_out=" + out] + FILES
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on %s (see the messages above)" % PROTO_DIR)
    return out


class Method:
    def __init__(self, service, desc, classes):
        self.service = service                      # "modal.client.ModalClient"
        self.service_short = service.rsplit(".", 1)[1]
        self.name = desc.name
        self.path = "/%s/%s" % (service, desc.name)
        self.request = classes[desc.input_type.full_name]
        self.response = classes[desc.output_type.full_name]
        self.client_streaming = desc.client_streaming
        self.server_streaming = desc.server_streaming


class Protos:
    """P.api.Sandbox, P.router.TaskExecWaitResponse, P.empty, P.methods (list of Method)."""

    def __init__(self, descriptor_set_path):
        fds = descriptor_pb2.FileDescriptorSet()
        with open(descriptor_set_path, "rb") as f:
            fds.ParseFromString(f.read())
        pool = descriptor_pool.DescriptorPool()
        for fd in fds.file:
            pool.Add(fd)
        factory = message_factory.MessageFactory(pool)
        classes = {}
        for fd in fds.file:
            file_desc = pool.FindFileByName(fd.name)
            for msg in file_desc.message_types_by_name.values():
                self._collect(factory, msg, classes)
        self.classes = classes
        self.api = _Namespace(classes, "modal.client.")
        self.router = _Namespace(classes, "modal.task_command_router.")
        self.empty = classes["google.protobuf.Empty"]
        self.any = classes["google.protobuf.Any"]
        self.methods = []
        for svc in SERVICES:
            sd = pool.FindServiceByName(svc)
            for m in sd.methods:
                self.methods.append(Method(svc, m, classes))

    def _collect(self, factory, msg, classes):
        classes[msg.full_name] = factory.GetPrototype(msg)
        for nested in msg.nested_types:
            self._collect(factory, nested, classes)


class _Namespace:
    def __init__(self, classes, prefix):
        self._classes = classes
        self._prefix = prefix

    def __getattr__(self, name):
        # nested messages are written with "_": P.api.VolumePutFiles2Request_File
        cls = self._classes.get(self._prefix + name.replace("_", "."))
        if cls is None:
            raise AttributeError("no message %s%s in the stand-in's protos" % (self._prefix, name))
        return cls


def load(out_dir):
    return Protos(compile_protos(out_dir))
