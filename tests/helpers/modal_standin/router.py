"""Handlers of modal.task_command_router.TaskCommandRouter: execs in a sandbox."""
import grpc

import box
from rpc import Fail
from sandboxes import Exec

C = grpc.StatusCode
STDOUT_PIPE = 1
STDERR_PIPE, STDERR_TO_STDOUT = 1, 2
FD_STDOUT, FD_STDERR = 0, 1


class TaskCommandRouter:
    def __init__(self, world):
        self.w = world
        self.P = world.protos

    def _sandbox(self, task_id):
        sb = self.w.by_task.get(task_id)
        if sb is None:
            raise Fail(C.NOT_FOUND, "Task %r not found" % task_id)
        return sb

    def _exec(self, task_id, exec_id):
        sb = self._sandbox(task_id)
        ex = sb.execs.get(exec_id)
        if ex is None:
            raise Fail(C.NOT_FOUND, "Exec %r not found in task %s" % (exec_id, task_id))
        return ex

    async def TaskExecStart(self, request, context):
        sb = self._sandbox(request.task_id)
        if not request.exec_id:
            raise Fail(C.INVALID_ARGUMENT, "exec_id is empty")
        if request.exec_id in sb.execs:
            return self.P.router.TaskExecStartResponse()   # the same exec again: idempotent
        if not sb.alive():
            raise Fail(C.NOT_FOUND, "Task %s has finished (%s): it runs no more commands"
                       % (sb.task_id, sb.result.exception or "status %d" % sb.result.status))
        if not request.command_args:
            raise Fail(C.INVALID_ARGUMENT, "command_args is empty")
        cwd = sb.default_cwd()
        if request.HasField("workdir"):
            cwd = box.clean_abs(request.workdir)
            if cwd is None:
                raise Fail(C.INVALID_ARGUMENT, "workdir must be an absolute path, got %r" % request.workdir)
        env = self.w.secret_env(request.secret_ids)
        env.update(request.env)
        stdout_pipe = request.stdout_config == STDOUT_PIPE
        stderr = {STDERR_PIPE: "pipe", STDERR_TO_STDOUT: "stdout"}.get(request.stderr_config, "null")
        timeout = request.timeout_secs if request.HasField("timeout_secs") else 0
        ex = Exec(sb, request.exec_id, request.command_args, cwd)
        sb.execs[ex.id] = ex
        try:
            await ex.start(sb.exec_env(env), stdout_pipe, stderr, timeout)
        except OSError as e:
            del sb.execs[ex.id]
            raise Fail(C.INTERNAL, "the stand-in cannot start bwrap: %s" % e)
        return self.P.router.TaskExecStartResponse()

    async def TaskExecStdioRead(self, request, context):
        ex = self._exec(request.task_id, request.exec_id)
        if request.file_descriptor == FD_STDOUT:
            out = ex.stdout
        elif request.file_descriptor == FD_STDERR:
            out = ex.stderr
        else:
            raise Fail(C.INVALID_ARGUMENT, "file_descriptor must be STDOUT (0) or STDERR (1)")
        async for chunk in out.chunks(request.offset):
            yield self.P.router.TaskExecStdioReadResponse(data=chunk)

    async def TaskExecStdinWrite(self, request, context):
        ex = self._exec(request.task_id, request.exec_id)
        err = await ex.write_stdin(request.offset, request.data, request.eof)
        if err:
            raise Fail(C.FAILED_PRECONDITION, err)
        return self.P.router.TaskExecStdinWriteResponse()

    async def TaskExecStdinWriteStream(self, request_iterator, context):
        ex = None
        offset = 0
        async for msg in request_iterator:
            kind = msg.WhichOneof("payload")
            if ex is None:
                if kind != "start":
                    raise Fail(C.INVALID_ARGUMENT, "the first message of the stream must be start")
                ex = self._exec(msg.start.task_id, msg.start.exec_id)
                offset = msg.start.offset
                if offset > ex.stdin_written:
                    raise Fail(C.FAILED_PRECONDITION, "stream offset %d is past the %d bytes written"
                               % (offset, ex.stdin_written))
                continue
            if kind == "data":
                err = await ex.write_stdin(offset, msg.data, False)
                offset += len(msg.data)
            elif kind == "end":
                err = await ex.write_stdin(offset, b"", True)
            else:
                err = "unexpected %s message after start" % kind
            if err:
                raise Fail(C.FAILED_PRECONDITION, err)
        if ex is None:
            raise Fail(C.INVALID_ARGUMENT, "empty stdin stream")
        return self.P.router.TaskExecStdinWriteStreamResponse()

    async def TaskExecStdinStatus(self, request, context):
        ex = self._exec(request.task_id, request.exec_id)
        return self.P.router.TaskExecStdinStatusResponse(num_bytes_written=ex.stdin_written,
                                                         closed=ex.stdin_closed)

    def _status(self, ex, cls):
        resp = cls()
        if ex.signal is not None:
            resp.signal = ex.signal
        elif ex.code is not None:
            resp.code = ex.code                         # presence: code 0 is on the wire
        return resp

    async def TaskExecPoll(self, request, context):
        ex = self._exec(request.task_id, request.exec_id)
        return self._status(ex, self.P.router.TaskExecPollResponse)

    async def TaskExecWait(self, request, context):
        ex = self._exec(request.task_id, request.exec_id)
        await ex.done.wait()
        return self._status(ex, self.P.router.TaskExecWaitResponse)

    async def TaskReloadVolumes(self, request, context):
        self._sandbox(request.task_id)
        return self.P.router.TaskReloadVolumesResponse()
