// The sandbox flow of the official Modal JS SDK (modal@0.7.2) against a Modal server (the
// stand-in in the tests): app, two-layer image, named secret, volume, a sandbox with
// cpu/memory/timeout/workdir/secrets/volumes/env, execs with stdin, stdout, stderr and exit
// codes, tags and list, terminate. Prints one JSON object of what it observed.
//
//   MODAL_SERVER_URL=http://127.0.0.1:PORT MODAL_TOKEN_ID=ak-test MODAL_TOKEN_SECRET=as-test \
//     node tests/modal_sdk/sdk_flow.mjs
//
// Reads the SDK from $RUNBOX_TEST_MODAL_JS_DIR (default /opt/runbox-test/modal-js, where
// tests/deps.sh installs it). SDK_SECRET_NAME / SDK_VOLUME_NAME / SDK_APP_NAME name the objects;
// the secret must exist with the key SDK_SECRET.
import path from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.env.RUNBOX_TEST_MODAL_JS_DIR || "/opt/runbox-test/modal-js";
const { ModalClient } = await import(
  pathToFileURL(path.join(dir, "node_modules/modal/dist/index.js")).href
);

const appName = process.env.SDK_APP_NAME || "sdk-cross-check";
const secretName = process.env.SDK_SECRET_NAME || "sdk-secret";
const volumeName = process.env.SDK_VOLUME_NAME || "sdk-volume";

async function run() {
  const out = {};
  const modal = new ModalClient();

  const app = await modal.apps.fromName(appName, { createIfMissing: true });
  out.app_id = app.appId;

  const secret = await modal.secrets.fromName(secretName, { requiredKeys: ["SDK_SECRET"] });
  out.secret_id = secret.secretId;
  try {
    await modal.secrets.fromName("no-such-secret-" + Date.now());
    out.missing_secret_error = null;
  } catch (e) {
    out.missing_secret_error = `${e.name}: ${e.message}`;
  }

  const volume = await modal.volumes.fromName(volumeName, { createIfMissing: true });
  out.volume_id = volume.volumeId;

  const layers = ["RUN echo building-layer-two && echo layer-two-stderr >&2", "ENV LAYER=two"];
  const image = modal.images.fromRegistry("python:3.11-slim").dockerfileCommands(layers);
  await image.build(app);
  out.image_id = image.imageId;
  const again = modal.images.fromRegistry("python:3.11-slim").dockerfileCommands(layers);
  await again.build(app);
  out.image_id_again = again.imageId;

  try {
    await modal.images.fromRegistry("python:3.11-slim").dockerfileCommands(["RUN exit 7"]).build(app);
    out.failed_build_error = null;
  } catch (e) {
    out.failed_build_error = e.message;
  }

  const sb = await modal.sandboxes.create(app, image, {
    cpu: 1.5,
    memoryMiB: 1024,
    timeoutMs: 600 * 1000,
    workdir: "/app/work",
    secrets: [secret],
    volumes: { "/data": volume },
    env: { SB_ENV: "sandbox-env" },
  });
  out.sandbox_id = sb.sandboxId;

  const script = [
    "set -e",
    "read line",
    'echo "stdin:$line"',
    'echo "env:$SDK_SECRET:$SB_ENV:$EXEC_ENV:$LAYER"',
    'echo "pwd:$(pwd)"',
    "echo from-the-sandbox > /data/hello.txt",
    "echo to-stderr >&2",
    "exit 3",
  ].join("\n");
  const p = await sb.exec(["sh", "-c", script], { env: { EXEC_ENV: "exec-env" } });
  await p.stdin.writeText("hello-stdin\n");
  await p.stdin.close();
  const [stdout, stderr] = await Promise.all([p.stdout.readText(), p.stderr.readText()]);
  out.stdout = stdout;
  out.stderr = stderr;
  out.exit_code = await p.wait();

  const ok = await sb.exec(["true"]);
  out.exit_code_zero = await ok.wait();

  const big = await sb.exec(["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"]);
  out.big_stdout_length = (await big.stdout.readText()).length;
  out.big_exit_code = await big.wait();

  await sb.setTags({ flow: "sdk", run: "one" });
  out.tags = await sb.getTags();
  out.listed = [];
  for await (const s of modal.sandboxes.list({ appId: app.appId, tags: { flow: "sdk" } })) {
    out.listed.push(s.sandboxId);
  }

  const same = await modal.sandboxes.fromId(sb.sandboxId);
  out.poll_running = await same.poll();

  out.terminate_exit_code = await sb.terminate({ wait: true });
  out.poll_after_terminate = await same.poll();
  return out;
}

try {
  const out = await run();
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(0);
} catch (e) {
  process.stdout.write(JSON.stringify({ error: `${e.name}: ${e.message}`, stack: e.stack }) + "\n");
  process.exit(1);
}
