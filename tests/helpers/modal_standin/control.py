"""Handlers of modal.client.ModalClient (the control plane)."""
import asyncio
import time

import grpc

import box
import images
from rpc import Fail
from sandboxes import Sandbox, new_id
from volumes import VolumeError
from world import env_name

C = grpc.StatusCode
MAX_LONG_POLL = 60.0
LIST_PAGE = 100


def _vol_fail(e):
    return Fail(C[e.code], e.message)


class ModalClient:
    def __init__(self, world):
        self.w = world
        self.P = world.protos

    # -- client, auth, environment

    async def ClientHello(self, request, context):
        return self.P.api.ClientHelloResponse()

    async def AuthTokenGet(self, request, context):
        return self.P.api.AuthTokenGetResponse(token=self.w.tokens.auth_token())

    async def EnvironmentGetOrCreate(self, request, context):
        name = env_name(request.deployment_name)
        env_id = self.w.environments.setdefault(name, "en-" + name)
        md = self.P.api.EnvironmentMetadata(name=name, environment_type=1)
        md.settings.image_builder_version = "2024.10"
        return self.P.api.EnvironmentGetOrCreateResponse(environment_id=env_id, metadata=md)

    # -- apps

    async def AppGetOrCreate(self, request, context):
        if not request.app_name:
            raise Fail(C.INVALID_ARGUMENT, "app_name is empty")
        app = self.w.app_get_or_create(request.environment_name, request.app_name,
                                       request.object_creation_type)
        return self.P.api.AppGetOrCreateResponse(app_id=app["id"])

    def _app(self, app_id):
        if app_id not in self.w.app_ids:
            raise Fail(C.NOT_FOUND, "App %r not found" % app_id)
        return self.w.app_ids[app_id]

    # -- secrets

    async def SecretGetOrCreate(self, request, context):
        t = request.object_creation_type
        env_dict = dict(request.env_dict)
        if t in (4, 5):
            if t == 4:
                self._app(request.app_id)
            self.w.check_env_dict(env_dict)
            sec = {"id": new_id("st-"), "name": "", "environment": env_name(request.environment_name),
                   "env": env_dict, "created_at": time.time()}
            self.w.secrets[sec["id"]] = sec
        elif t == 0:
            sid = self.w.named_secrets.get((env_name(request.environment_name), request.deployment_name))
            if not request.deployment_name or sid is None:
                raise Fail(C.NOT_FOUND, "Secret '%s' not found in environment '%s'"
                           % (request.deployment_name, env_name(request.environment_name)))
            sec = self.w.secrets[sid]
            missing = [k for k in request.required_keys if k not in sec["env"]]
            if missing:
                raise Fail(C.FAILED_PRECONDITION, "Secret is missing key(s): %s" % ", ".join(missing))
        elif t in (1, 2, 3):
            if not request.deployment_name:
                raise Fail(C.INVALID_ARGUMENT, "deployment_name is empty")
            sec = self.w.secret_set(request.environment_name, request.deployment_name, env_dict, t)
        else:
            raise Fail(C.INVALID_ARGUMENT, "unknown object_creation_type %d" % t)
        md = self.P.api.SecretMetadata(name=sec["name"])
        md.creation_info.created_at = sec["created_at"]
        return self.P.api.SecretGetOrCreateResponse(secret_id=sec["id"], metadata=md)

    async def SecretDelete(self, request, context):
        sec = self.w.secrets.pop(request.secret_id, None)
        if sec is None:
            raise Fail(C.NOT_FOUND, "Secret %r not found" % request.secret_id)
        if sec["name"]:
            self.w.named_secrets.pop((sec["environment"], sec["name"]), None)
        return self.P.empty()

    # -- images

    def _metadata(self, img):
        md = self.P.api.ImageMetadata(image_builder_version="2024.10")
        if img.workdir:
            md.workdir = img.workdir
        return md

    def _image_result(self, img):
        return self.P.api.GenericResult(status=img.status, exception=img.exception)

    async def ImageGetOrCreate(self, request, context):
        self._app(request.app_id)
        secret_env = self.w.secret_env(request.image.secret_ids)
        img, err = self.w.images.get_or_create(request, secret_env)
        if err:
            raise Fail(C.INVALID_ARGUMENT, err)
        resp = self.P.api.ImageGetOrCreateResponse(image_id=img.id)
        if img.status != images.RUNNING:
            resp.result.CopyFrom(self._image_result(img))
            if img.status == images.SUCCESS:
                resp.metadata.CopyFrom(self._metadata(img))
        return resp

    async def ImageJoinStreaming(self, request, context):
        img = self.w.images.by_id.get(request.image_id)
        if img is None:
            raise Fail(C.NOT_FOUND, "Image %r not found" % request.image_id)
        last = 0
        if request.last_entry_id:
            try:
                last = int(request.last_entry_id.split("-")[0])
            except ValueError:
                raise Fail(C.INVALID_ARGUMENT, "bad last_entry_id %r" % request.last_entry_id)
        timeout = request.timeout if request.timeout > 0 else 55.0
        async for item in self.w.images.join(img, last, min(timeout, MAX_LONG_POLL)):
            if item[0] == "log":
                _, n, data, fd = item
                logs = self.P.api.TaskLogs(data=data, file_descriptor=fd, timestamp=time.time(),
                                           task_state=4)
                yield self.P.api.ImageJoinStreamingResponse(task_logs=[logs], entry_id="%d-0" % n)
            else:
                resp = self.P.api.ImageJoinStreamingResponse(result=self._image_result(img), eof=True)
                if img.status == images.SUCCESS:
                    resp.metadata.CopyFrom(self._metadata(img))
                yield resp

    async def ImageFromId(self, request, context):
        img = self.w.images.by_id.get(request.image_id)
        if img is None or img.status != images.SUCCESS:
            raise Fail(C.NOT_FOUND, "Image %r not found" % request.image_id)
        return self.P.api.ImageFromIdResponse(image_id=img.id, metadata=self._metadata(img))

    # -- volumes

    def _volume(self, volume_id):
        try:
            return self.w.volumes.get(volume_id)
        except VolumeError as e:
            raise _vol_fail(e)

    async def VolumeGetOrCreate(self, request, context):
        if request.object_creation_type not in (4, 5) and not request.deployment_name:
            raise Fail(C.INVALID_ARGUMENT, "deployment_name is empty")
        try:
            vol = self.w.volumes.get_or_create(env_name(request.environment_name), request.deployment_name,
                                               request.object_creation_type, request.version)
        except VolumeError as e:
            raise _vol_fail(e)
        md = self.P.api.VolumeMetadata(version=vol.version, name=vol.name)
        md.creation_info.created_at = vol.created_at
        return self.P.api.VolumeGetOrCreateResponse(volume_id=vol.id, version=vol.version, metadata=md)

    async def VolumeDelete(self, request, context):
        self.w.volumes.delete(self._volume(request.volume_id))
        return self.P.empty()

    async def VolumeHeartbeat(self, request, context):
        self._volume(request.volume_id)
        return self.P.empty()

    async def _list(self, request, cls):
        vol = self._volume(request.volume_id)
        limit = request.max_entries if request.HasField("max_entries") else None
        try:
            entries = await asyncio.to_thread(self.w.volumes.list, vol, request.path,
                                              request.recursive, limit)
        except VolumeError as e:
            raise _vol_fail(e)
        for i in range(0, len(entries), LIST_PAGE):
            batch = [self.P.api.FileEntry(**e) for e in entries[i:i + LIST_PAGE]]
            yield cls(entries=batch)

    async def VolumeListFiles(self, request, context):
        async for m in self._list(request, self.P.api.VolumeListFilesResponse):
            yield m

    async def VolumeListFiles2(self, request, context):
        async for m in self._list(request, self.P.api.VolumeListFiles2Response):
            yield m

    async def VolumeGetFile2(self, request, context):
        vol = self._volume(request.volume_id)
        try:
            urls, size, start, length = self.w.volumes.get_urls(vol, request.path, request.start,
                                                                 getattr(request, "len"))
        except VolumeError as e:
            raise _vol_fail(e)
        resp = self.P.api.VolumeGetFile2Response(get_urls=urls, size=size, start=start)
        setattr(resp, "len", length)
        return resp

    async def VolumePutFiles2(self, request, context):
        vol = self._volume(request.volume_id)
        try:
            missing = await self.w.volumes.put_files(vol, list(request.files),
                                                     request.disallow_overwrite_existing_files)
        except VolumeError as e:
            raise _vol_fail(e)
        MB = self.P.api.VolumePutFiles2Response_MissingBlock
        return self.P.api.VolumePutFiles2Response(
            missing_blocks=[MB(file_index=fi, block_index=bi, put_url=url) for fi, bi, url in missing])

    async def VolumeCommit(self, request, context):
        vol = self._volume(request.volume_id)
        vol.commits += 1
        return self.P.api.VolumeCommitResponse(skip_reload=False)

    async def VolumeReload(self, request, context):
        vol = self._volume(request.volume_id)
        vol.reloads += 1
        return self.P.empty()

    async def _remove(self, request):
        vol = self._volume(request.volume_id)
        try:
            self.w.volumes.remove(vol, request.path, request.recursive)
        except VolumeError as e:
            raise _vol_fail(e)
        return self.P.empty()

    async def VolumeRemoveFile(self, request, context):
        return await self._remove(request)

    async def VolumeRemoveFile2(self, request, context):
        return await self._remove(request)

    # -- sandboxes

    def _sandbox(self, sandbox_id):
        sb = self.w.sandboxes.get(sandbox_id)
        if sb is None:
            raise Fail(C.NOT_FOUND, "Sandbox with id: '%s' not found" % sandbox_id)
        return sb

    def _check_definition(self, d):
        img = self.w.images.by_id.get(d.image_id)
        if img is None:
            raise Fail(C.NOT_FOUND, "Image %r not found" % d.image_id)
        if img.status != images.SUCCESS:
            raise Fail(C.FAILED_PRECONDITION, "Image %s has not been built successfully" % d.image_id)
        if d.HasField("workdir"):
            wd = box.clean_abs(d.workdir)
            if wd is None:
                raise Fail(C.INVALID_ARGUMENT, "workdir must be an absolute path without '..', got %r"
                           % d.workdir)
            if box.in_system(wd) and wd != "/":
                raise Fail(C.INVALID_ARGUMENT, "workdir %r lies in a read-only system folder of the "
                           "stand-in's sandboxes; use a folder such as /app" % d.workdir)
        if d.timeout_secs > 24 * 3600:
            raise Fail(C.INVALID_ARGUMENT, "timeout_secs %d is over 24 hours" % d.timeout_secs)
        seen = set()
        for vm in d.volume_mounts:
            self._volume(vm.volume_id)
            path = box.clean_abs(vm.mount_path)
            if path is None or path == "/" or box.in_system(path) or path in ("/tmp", "/root"):
                raise Fail(C.INVALID_ARGUMENT, "volume mount path %r must be an absolute folder outside "
                           "the system folders, /tmp and /root (e.g. /data or /app/artifacts)" % vm.mount_path)
            if path in seen:
                raise Fail(C.INVALID_ARGUMENT, "two volumes are mounted at %s" % path)
            seen.add(path)
        return img

    async def SandboxCreate(self, request, context):
        self._app(request.app_id)
        # a retried create (same x-idempotency-key) gets the sandbox the first attempt made
        key = dict(context.invocation_metadata() or ()).get("x-idempotency-key")
        done = self.w.idempotent.get(("SandboxCreate", key)) if key else None
        if done:
            return self.P.api.SandboxCreateResponse(
                sandbox_id=done.id, metadata=self.P.api.SandboxHandleMetadata(app_id=done.app_id))
        d = request.definition
        img = self._check_definition(d)
        env = self.w.secret_env(d.secret_ids)
        if d.HasField("environment_variables"):
            env.update(d.environment_variables.contents)
        name = d.name if d.HasField("name") else ""
        if name:
            for other in self.w.sandboxes.values():
                if other.app_id == request.app_id and other.name == name and other.alive():
                    raise Fail(C.ALREADY_EXISTS, "a sandbox named %r already runs in this app" % name)
        tags = {t.tag_name: t.tag_value for t in request.tags}
        sb = Sandbox(self.w, request.app_id, d, tags, env, img)
        try:
            await sb.start(self.w.faults.take_sandbox_death())
        except OSError as e:
            sb.finish(5, 0, "cannot start the sandbox: %s" % e)
            raise Fail(C.INTERNAL, "the stand-in cannot start bwrap (%s): %s" % (self.w.bwrap, e))
        self.w.sandboxes[sb.id] = sb
        self.w.by_task[sb.task_id] = sb
        if key:
            self.w.idempotent[("SandboxCreate", key)] = sb
        md = self.P.api.SandboxHandleMetadata(app_id=sb.app_id)
        return self.P.api.SandboxCreateResponse(sandbox_id=sb.id, metadata=md)

    async def SandboxGetTaskId(self, request, context):
        sb = self._sandbox(request.sandbox_id)
        resp = self.P.api.SandboxGetTaskIdResponse(task_id=sb.task_id)
        if sb.result is not None:
            resp.task_result.CopyFrom(sb.result)
        return resp

    async def SandboxWait(self, request, context):
        sb = self._sandbox(request.sandbox_id)
        if sb.result is None and request.timeout > 0:
            try:
                await asyncio.wait_for(sb.finished.wait(), min(request.timeout, MAX_LONG_POLL))
            except asyncio.TimeoutError:
                pass
        resp = self.P.api.SandboxWaitResponse()
        resp.metadata.app_id = sb.app_id
        if sb.result is not None:
            resp.result.CopyFrom(sb.result)
            resp.metadata.result.CopyFrom(sb.result)
        return resp

    async def SandboxTerminate(self, request, context):
        sb = self._sandbox(request.sandbox_id)
        resp = self.P.api.SandboxTerminateResponse()
        if sb.result is not None:
            resp.existing_result.CopyFrom(sb.result)
        else:
            sb.finish(3, 0, "Sandbox terminated")
            await sb.reap()
        return resp

    def _info(self, sb):
        info = self.P.api.SandboxInfo(id=sb.id, created_at=sb.created_at, app_id=sb.app_id,
                                      name=sb.name, image_id=sb.definition.image_id,
                                      timeout_secs=sb.definition.timeout_secs,
                                      tags=[self.P.api.SandboxTag(tag_name=k, tag_value=v)
                                            for k, v in sorted(sb.tags.items())])
        info.task_info.id = sb.task_id
        info.task_info.sandbox_id = sb.id
        info.task_info.started_at = sb.created_at
        info.task_info.enqueued_at = sb.created_at
        info.metadata.app_id = sb.app_id
        if sb.result is not None:
            info.task_info.result.CopyFrom(sb.result)
            info.task_info.finished_at = sb.finished_at
            info.metadata.result.CopyFrom(sb.result)
        return info

    async def SandboxList(self, request, context):
        want = {t.tag_name: t.tag_value for t in request.tags}
        env = env_name(request.environment_name)
        out = []
        for sb in sorted(self.w.sandboxes.values(), key=lambda s: s.created_at, reverse=True):
            app = self.w.app_ids.get(sb.app_id)
            if request.app_id and sb.app_id != request.app_id:
                continue
            if not request.app_id and app and app["environment"] != env:
                continue
            if not request.include_finished and not sb.alive():
                continue
            if request.before_timestamp and sb.created_at >= request.before_timestamp:
                continue
            if any(sb.tags.get(k) != v for k, v in want.items()):
                continue
            out.append(self._info(sb))
            if len(out) >= LIST_PAGE:
                break
        return self.P.api.SandboxListResponse(sandboxes=out)

    async def SandboxTagsSet(self, request, context):
        sb = self._sandbox(request.sandbox_id)
        sb.tags = {t.tag_name: t.tag_value for t in request.tags}
        return self.P.empty()

    async def SandboxTagsGet(self, request, context):
        sb = self._sandbox(request.sandbox_id)
        return self.P.api.SandboxTagsGetResponse(
            tags=[self.P.api.SandboxTag(tag_name=k, tag_value=v) for k, v in sorted(sb.tags.items())])

    async def TaskGetCommandRouterAccess(self, request, context):
        sb = self.w.by_task.get(request.task_id)
        if sb is None:
            raise Fail(C.NOT_FOUND, "Task %r not found" % request.task_id)
        jwt = self.w.tokens.router_jwt(sb.task_id)
        return self.P.api.TaskGetCommandRouterAccessResponse(
            jwt=jwt, url="https://127.0.0.1:%d" % self.w.grpc_port)
