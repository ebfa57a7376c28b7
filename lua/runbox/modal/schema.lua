-- Message schemas of the Modal API for runbox.pb: the subset of modal.client (control plane) and
-- modal.task_command_router (the per-task command router) that runbox uses. Names and field
-- numbers are the ones of Modal's own protos (modal_proto/api.proto and task_command_router.proto,
-- see the reference in docs/api/modal.md); fields runbox never sends nor reads are left out
-- (decode skips them). Nested proto messages and enums get flat names (VolumePutFiles2Request's
-- File is VolumePutFiles2File, FileEntry's FileType is FileType).
local pb = require "runbox.pb"

local M = {}

M.CONTROL = "/modal.client.ModalClient/"
M.ROUTER = "/modal.task_command_router.TaskCommandRouter/"

local S = pb.schema{
  -------------------------------------------------------------------------------------------------
  -- shared

  Empty = {},
  GenericStatus = pb.enum{
    GENERIC_STATUS_UNSPECIFIED = 0, GENERIC_STATUS_SUCCESS = 1, GENERIC_STATUS_FAILURE = 2,
    GENERIC_STATUS_TERMINATED = 3, GENERIC_STATUS_TIMEOUT = 4, GENERIC_STATUS_INIT_FAILURE = 5,
    GENERIC_STATUS_INTERNAL_FAILURE = 6, GENERIC_STATUS_IDLE_TIMEOUT = 7,
    GENERIC_STATUS_MEMORY_MANAGER_EVICTION = 8,
  },
  GenericResult = {
    {1, "status", "GenericStatus"},
    {2, "exception", "string"},
    {3, "exitcode", "int32"},
    {4, "traceback", "string"},
    {5, "data", "bytes", oneof = "data_oneof"},
    {10, "data_blob_id", "string", oneof = "data_oneof"},
  },
  ObjectCreationType = pb.enum{
    OBJECT_CREATION_TYPE_UNSPECIFIED = 0, OBJECT_CREATION_TYPE_CREATE_IF_MISSING = 1,
    OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS = 2, OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS = 3,
    OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP = 4, OBJECT_CREATION_TYPE_EPHEMERAL = 5,
  },
  CreationInfo = {{1, "created_at", "double"}, {2, "created_by", "string"}},
  FileDescriptor = pb.enum{
    FILE_DESCRIPTOR_UNSPECIFIED = 0, FILE_DESCRIPTOR_STDOUT = 1, FILE_DESCRIPTOR_STDERR = 2,
    FILE_DESCRIPTOR_INFO = 3,
  },

  -- errors: grpc-status-details-bin holds an RPCStatus (the layout of google.rpc.Status)
  Any = {{1, "type_url", "string"}, {2, "value", "bytes"}},
  RPCStatus = {{1, "code", "int32"}, {2, "message", "string"}, {3, "details", "Any", repeated = true}},
  RPCRetryPolicy = {{1, "retry_after_secs", "float"}},

  -------------------------------------------------------------------------------------------------
  -- client, auth token, app

  WarningType = pb.enum{
    WARNING_TYPE_UNSPECIFIED = 0, WARNING_TYPE_CLIENT_DEPRECATION = 1, WARNING_TYPE_RESOURCE_LIMIT = 2,
    WARNING_TYPE_FUNCTION_CONFIGURATION = 3,
  },
  Warning = {{1, "type", "WarningType"}, {2, "message", "string"}},
  ClientHelloResponse = {
    {1, "warning", "string"},
    {2, "image_builder_version", "string"},
    {4, "server_warnings", "Warning", repeated = true},
  },
  AuthTokenGetRequest = {},
  AuthTokenGetResponse = {{1, "token", "string"}},
  AppGetOrCreateRequest = {
    {1, "app_name", "string"},
    {2, "environment_name", "string"},
    {3, "object_creation_type", "ObjectCreationType"},
  },
  AppGetOrCreateResponse = {{1, "app_id", "string"}},

  -------------------------------------------------------------------------------------------------
  -- images

  DeploymentNamespace = pb.enum{
    DEPLOYMENT_NAMESPACE_UNSPECIFIED = 0, DEPLOYMENT_NAMESPACE_WORKSPACE = 1, DEPLOYMENT_NAMESPACE_GLOBAL = 3,
  },
  RegistryAuthType = pb.enum{
    REGISTRY_AUTH_TYPE_UNSPECIFIED = 0, REGISTRY_AUTH_TYPE_AWS = 1, REGISTRY_AUTH_TYPE_GCP = 2,
    REGISTRY_AUTH_TYPE_PUBLIC = 3, REGISTRY_AUTH_TYPE_STATIC_CREDS = 4,
  },
  BaseImage = {{1, "image_id", "string"}, {2, "docker_tag", "string"}},
  ImageContextFile = {{1, "filename", "string"}, {2, "data", "bytes"}},
  GPUConfig = {{2, "count", "uint32"}, {4, "gpu_type", "string"}},
  ImageRegistryConfig = {{1, "registry_auth_type", "RegistryAuthType"}, {2, "secret_id", "string"}},
  Image = {
    {5, "base_images", "BaseImage", repeated = true},
    {6, "dockerfile_commands", "string", repeated = true},
    {7, "context_files", "ImageContextFile", repeated = true},
    {11, "version", "string"},
    {12, "secret_ids", "string", repeated = true},
    {16, "gpu_config", "GPUConfig"},
    {17, "image_registry_config", "ImageRegistryConfig"},
  },
  ImageMetadata = {
    {1, "python_version_info", "string", optional = true},
    {2, "python_packages", "map", key = "string", value = "string"},
    {3, "workdir", "string", optional = true},
    {4, "libc_version_info", "string", optional = true},
    {5, "image_builder_version", "string", optional = true},
  },
  ImageGetOrCreateRequest = {
    {2, "image", "Image"},
    {4, "app_id", "string"},
    {7, "force_build", "bool"},
    {8, "namespace", "DeploymentNamespace"},
    {9, "builder_version", "string"},
    {11, "ignore_cache", "bool"},
  },
  ImageGetOrCreateResponse = {
    {1, "image_id", "string"},
    {2, "result", "GenericResult"},
    {3, "metadata", "ImageMetadata"},
  },
  TaskLogs = {
    {1, "data", "string"},
    {7, "timestamp", "double"},
    {8, "file_descriptor", "FileDescriptor"},
    {12, "timestamp_ns", "uint64"},
    {13, "container_id", "string"},
  },
  ImageJoinStreamingRequest = {
    {1, "image_id", "string"},
    {2, "timeout", "float"},
    {3, "last_entry_id", "string"},
    {4, "include_logs_for_finished", "bool"},
  },
  ImageJoinStreamingResponse = {
    {1, "result", "GenericResult"},
    {2, "task_logs", "TaskLogs", repeated = true},
    {3, "entry_id", "string"},
    {4, "eof", "bool"},
    {5, "metadata", "ImageMetadata"},
  },

  -------------------------------------------------------------------------------------------------
  -- secrets

  SecretMetadata = {{1, "name", "string"}, {2, "creation_info", "CreationInfo"}},
  SecretGetOrCreateRequest = {
    {1, "deployment_name", "string"},
    {3, "environment_name", "string"},
    {4, "object_creation_type", "ObjectCreationType"},
    {5, "env_dict", "map", key = "string", value = "string"},
    {6, "app_id", "string"},
    {7, "required_keys", "string", repeated = true},
  },
  SecretGetOrCreateResponse = {{1, "secret_id", "string"}, {2, "metadata", "SecretMetadata"}},

  -------------------------------------------------------------------------------------------------
  -- volumes

  VolumeFsVersion = pb.enum{VOLUME_FS_VERSION_UNSPECIFIED = 0, VOLUME_FS_VERSION_V1 = 1, VOLUME_FS_VERSION_V2 = 2},
  VolumeMetadata = {{1, "version", "VolumeFsVersion"}, {2, "name", "string"}, {3, "creation_info", "CreationInfo"}},
  VolumeGetOrCreateRequest = {
    {1, "deployment_name", "string"},
    {3, "environment_name", "string"},
    {4, "object_creation_type", "ObjectCreationType"},
    {5, "app_id", "string"},
    {6, "version", "VolumeFsVersion"},
  },
  VolumeGetOrCreateResponse = {
    {1, "volume_id", "string"},
    {2, "version", "VolumeFsVersion"},
    {3, "metadata", "VolumeMetadata"},
  },
  FileType = pb.enum{UNSPECIFIED = 0, FILE = 1, DIRECTORY = 2, SYMLINK = 3, FIFO = 4, SOCKET = 5},
  FileEntry = {{1, "path", "string"}, {2, "type", "FileType"}, {3, "mtime", "uint64"}, {4, "size", "uint64"}},
  VolumeListFilesRequest = {
    {1, "volume_id", "string"},
    {2, "path", "string"},
    {3, "max_entries", "uint32", optional = true},
    {4, "recursive", "bool"},
  },
  VolumeListFilesResponse = {{1, "entries", "FileEntry", repeated = true}},
  VolumeGetFile2Request = {
    {1, "volume_id", "string"},
    {2, "path", "string"},
    {3, "start", "uint64"},
    {4, "len", "uint64"},
  },
  VolumeGetFile2Response = {
    {1, "get_urls", "string", repeated = true},
    {2, "size", "uint64"},
    {3, "start", "uint64"},
    {4, "len", "uint64"},
  },
  VolumePutFiles2Block = {{1, "contents_sha256", "bytes"}, {2, "put_response", "bytes", optional = true}},
  VolumePutFiles2File = {
    {1, "path", "string"},
    {2, "size", "uint64"},
    {3, "blocks", "VolumePutFiles2Block", repeated = true},
    {4, "mode", "uint32", optional = true},
  },
  VolumePutFiles2Request = {
    {1, "volume_id", "string"},
    {2, "files", "VolumePutFiles2File", repeated = true},
    {3, "disallow_overwrite_existing_files", "bool"},
  },
  VolumePutFiles2MissingBlock = {{1, "file_index", "uint64"}, {2, "block_index", "uint64"}, {3, "put_url", "string"}},
  VolumePutFiles2Response = {{1, "missing_blocks", "VolumePutFiles2MissingBlock", repeated = true}},
  VolumeRemoveFileRequest = {{1, "volume_id", "string"}, {2, "path", "string"}, {3, "recursive", "bool"}},
  VolumeCommitRequest = {{1, "volume_id", "string"}, {2, "container_id", "string", optional = true}},
  VolumeCommitResponse = {{1, "skip_reload", "bool"}},
  VolumeReloadRequest = {{1, "volume_id", "string"}},

  -------------------------------------------------------------------------------------------------
  -- sandboxes

  Resources = {
    {2, "memory_mb", "uint32"},
    {3, "milli_cpu", "uint32"},
    {4, "gpu_config", "GPUConfig"},
    {5, "memory_mb_max", "uint32"},
    {7, "milli_cpu_max", "uint32"},
  },
  VolumeMount = {
    {1, "volume_id", "string"},
    {2, "mount_path", "string"},
    {3, "allow_background_commits", "bool"},
    {4, "read_only", "bool"},
  },
  PortSpec = {{1, "port", "uint32"}, {2, "unencrypted", "bool"}},
  PortSpecs = {{1, "ports", "PortSpec", repeated = true}},
  NetworkAccessType = pb.enum{UNSPECIFIED = 0, OPEN = 1, BLOCKED = 2, ALLOWLIST = 3},
  NetworkAccess = {
    {1, "network_access_type", "NetworkAccessType"},
    {2, "allowed_cidrs", "string", repeated = true},
    {3, "allowed_domains", "string", repeated = true},
  },
  SchedulerPlacement = {{4, "regions", "string", repeated = true}},
  Sandbox = {
    {1, "entrypoint_args", "string", repeated = true},
    {3, "image_id", "string"},
    {4, "secret_ids", "string", repeated = true},
    {5, "resources", "Resources"},
    {7, "timeout_secs", "uint32"},
    {8, "workdir", "string", optional = true},
    {13, "volume_mounts", "VolumeMount", repeated = true},
    {17, "scheduler_placement", "SchedulerPlacement"},
    {20, "open_ports", "PortSpecs", oneof = "open_ports_oneof"},
    {22, "network_access", "NetworkAccess"},
    {30, "name", "string", optional = true},
    {33, "idle_timeout_secs", "uint32", optional = true},
  },
  SandboxTag = {{1, "tag_name", "string"}, {2, "tag_value", "string"}},
  SandboxHandleMetadata = {{1, "result", "GenericResult"}, {2, "app_id", "string"}},
  SandboxCreateRequest = {
    {1, "app_id", "string"},
    {2, "definition", "Sandbox"},
    {4, "tags", "SandboxTag", repeated = true},
  },
  SandboxCreateResponse = {{1, "sandbox_id", "string"}, {2, "metadata", "SandboxHandleMetadata"}},
  SandboxGetTaskIdRequest = {
    {1, "sandbox_id", "string"},
    {2, "timeout", "float", optional = true},
    {3, "wait_until_ready", "bool"},
  },
  SandboxGetTaskIdResponse = {
    {1, "task_id", "string", optional = true},
    {2, "task_result", "GenericResult", optional = true},
  },
  TaskGetCommandRouterAccessRequest = {{1, "task_id", "string"}},
  TaskGetCommandRouterAccessResponse = {{1, "jwt", "string"}, {2, "url", "string"}},
  SandboxWaitRequest = {{1, "sandbox_id", "string"}, {2, "timeout", "float"}},
  SandboxWaitResponse = {{1, "result", "GenericResult"}, {2, "metadata", "SandboxHandleMetadata"}},
  SandboxTerminateRequest = {{1, "sandbox_id", "string"}},
  SandboxTerminateResponse = {{1, "existing_result", "GenericResult"}},
  TaskInfo = {
    {1, "id", "string"},
    {2, "started_at", "double"},
    {3, "finished_at", "double"},
    {4, "result", "GenericResult"},
    {5, "enqueued_at", "double"},
    {7, "sandbox_id", "string"},
  },
  SandboxInfo = {
    {1, "id", "string"},
    {3, "created_at", "double"},
    {4, "task_info", "TaskInfo"},
    {5, "app_id", "string"},
    {6, "tags", "SandboxTag", repeated = true},
    {7, "name", "string"},
    {8, "image_id", "string"},
    {11, "timeout_secs", "uint32"},
    {16, "metadata", "SandboxHandleMetadata"},
  },
  SandboxListRequest = {
    {1, "app_id", "string"},
    {2, "before_timestamp", "double"},
    {3, "environment_name", "string"},
    {4, "include_finished", "bool"},
    {5, "tags", "SandboxTag", repeated = true},
  },
  SandboxListResponse = {{1, "sandboxes", "SandboxInfo", repeated = true}},

  -------------------------------------------------------------------------------------------------
  -- command router (package modal.task_command_router)

  TaskExecStdoutConfig = pb.enum{TASK_EXEC_STDOUT_CONFIG_DEVNULL = 0, TASK_EXEC_STDOUT_CONFIG_PIPE = 1},
  TaskExecStderrConfig = pb.enum{
    TASK_EXEC_STDERR_CONFIG_DEVNULL = 0, TASK_EXEC_STDERR_CONFIG_PIPE = 1, TASK_EXEC_STDERR_CONFIG_STDOUT = 2,
  },
  TaskExecStdioFileDescriptor = pb.enum{
    TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT = 0, TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR = 1,
  },
  TaskExecStartRequest = {
    {1, "task_id", "string"},
    {2, "exec_id", "string"},
    {3, "command_args", "string", repeated = true},
    {4, "stdout_config", "TaskExecStdoutConfig"},
    {5, "stderr_config", "TaskExecStderrConfig"},
    {6, "timeout_secs", "uint32", optional = true},
    {7, "workdir", "string", optional = true},
    {8, "secret_ids", "string", repeated = true},
    {10, "runtime_debug", "bool"},
    {11, "container_id", "string"},
    {12, "env", "map", key = "string", value = "string"},
  },
  TaskExecStartResponse = {},
  TaskExecStdioReadRequest = {
    {1, "task_id", "string"},
    {2, "exec_id", "string"},
    {3, "offset", "uint64"},
    {4, "file_descriptor", "TaskExecStdioFileDescriptor"},
  },
  TaskExecStdioReadResponse = {{1, "data", "bytes"}},
  TaskExecStdinWriteRequest = {
    {1, "task_id", "string"},
    {2, "exec_id", "string"},
    {3, "offset", "uint64"},
    {4, "data", "bytes"},
    {5, "eof", "bool"},
  },
  TaskExecStdinWriteResponse = {},
  TaskExecWaitRequest = {{1, "task_id", "string"}, {2, "exec_id", "string"}},
  TaskExecWaitResponse = {{1, "code", "int32", oneof = "exit_status"}, {2, "signal", "int32", oneof = "exit_status"}},
  TaskExecPollRequest = {{1, "task_id", "string"}, {2, "exec_id", "string"}},
  TaskExecPollResponse = {{1, "code", "int32", oneof = "exit_status"}, {2, "signal", "int32", oneof = "exit_status"}},
  TaskReloadVolumesRequest = {{1, "task_id", "string"}, {2, "container_id", "string"}},
  TaskReloadVolumesResponse = {},
}

M.S = S

-- Request and response schemas of each RPC used, by method name.
M.methods = {
  ClientHello = {S.Empty, S.ClientHelloResponse},
  AuthTokenGet = {S.AuthTokenGetRequest, S.AuthTokenGetResponse},
  AppGetOrCreate = {S.AppGetOrCreateRequest, S.AppGetOrCreateResponse},
  ImageGetOrCreate = {S.ImageGetOrCreateRequest, S.ImageGetOrCreateResponse},
  ImageJoinStreaming = {S.ImageJoinStreamingRequest, S.ImageJoinStreamingResponse},
  SecretGetOrCreate = {S.SecretGetOrCreateRequest, S.SecretGetOrCreateResponse},
  VolumeGetOrCreate = {S.VolumeGetOrCreateRequest, S.VolumeGetOrCreateResponse},
  VolumeListFiles = {S.VolumeListFilesRequest, S.VolumeListFilesResponse},
  VolumeListFiles2 = {S.VolumeListFilesRequest, S.VolumeListFilesResponse},
  VolumeGetFile2 = {S.VolumeGetFile2Request, S.VolumeGetFile2Response},
  VolumePutFiles2 = {S.VolumePutFiles2Request, S.VolumePutFiles2Response},
  VolumeRemoveFile = {S.VolumeRemoveFileRequest, S.Empty},
  VolumeRemoveFile2 = {S.VolumeRemoveFileRequest, S.Empty},
  VolumeCommit = {S.VolumeCommitRequest, S.VolumeCommitResponse},
  VolumeReload = {S.VolumeReloadRequest, S.Empty},
  SandboxCreate = {S.SandboxCreateRequest, S.SandboxCreateResponse},
  SandboxGetTaskId = {S.SandboxGetTaskIdRequest, S.SandboxGetTaskIdResponse},
  TaskGetCommandRouterAccess = {S.TaskGetCommandRouterAccessRequest, S.TaskGetCommandRouterAccessResponse},
  SandboxWait = {S.SandboxWaitRequest, S.SandboxWaitResponse},
  SandboxTerminate = {S.SandboxTerminateRequest, S.SandboxTerminateResponse},
  SandboxList = {S.SandboxListRequest, S.SandboxListResponse},
  -- router
  TaskExecStart = {S.TaskExecStartRequest, S.TaskExecStartResponse},
  TaskExecStdioRead = {S.TaskExecStdioReadRequest, S.TaskExecStdioReadResponse},
  TaskExecStdinWrite = {S.TaskExecStdinWriteRequest, S.TaskExecStdinWriteResponse},
  TaskExecWait = {S.TaskExecWaitRequest, S.TaskExecWaitResponse},
  TaskExecPoll = {S.TaskExecPollRequest, S.TaskExecPollResponse},
  TaskReloadVolumes = {S.TaskReloadVolumesRequest, S.TaskReloadVolumesResponse},
}

-- The number of an enum value that decode returned (a name, or a number pb did not know).
function M.enum_number(enum, v)
  if type(v) == "number" then return v end
  return S[enum][v] or -1
end

-- GenericStatus as a short lower-case word ("success", "terminated", ...) for messages and results.
function M.status_word(v)
  local n = M.enum_number("GenericStatus", v)
  for name, num in pairs(S.GenericStatus) do
    if num == n then return (name:gsub("^GENERIC_STATUS_", "")):lower() end
  end
  return "status " .. tostring(n)
end

-- The request and response schemas of method; a method without one is a programming error.
function M.of(method)
  local s = M.methods[method]
  if not s then error("modal: no schema for method " .. tostring(method), 3) end
  return s[1], s[2]
end

return M
