#!/usr/bin/env bash
# bench/batch_baseline.sh TASKS_DIR OUT_DIR [PARALLEL [AGENT]]
# The least a user could write to get what a runbox batch gives (without its scoring report,
# journal, retries or limits): for each task folder under TASKS_DIR, with `xargs -P PARALLEL`, one
# bubblewrap sandbox with the local backend's kind of isolation, running a bash script that clones
# the task's repository at its start commit, runs the agent (a shell line; default `true`), writes
# the git diff, writes each test script of tb_meta.json into the repository and runs pytest on it.
# Per task, OUT_DIR/<task>/app gets diff.patch, agent.log, test-<i>.txt and results.txt
# ("<exit code> <path>" per test script). Needs bwrap, git, jq (apt-get install jq) and
# Debian's python3-pytest. The task's repo.git_url must be an absolute path (batch.sh makes it so).
set -euo pipefail
TASKS=$1
OUT=$2
PARALLEL=${3:-16}
AGENT=${4:-true}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The host's system, read-only, as lua/runbox/sandbox/local.lua shows it (the same mounts).
SYSTEM_ARGS=()
for name in usr bin sbin lib lib32 lib64 libx32 etc opt var sys nix gnu snap; do
  if [ -L "/$name" ]; then SYSTEM_ARGS+=(--symlink "$(readlink "/$name")" "/$name")
  elif [ -d "/$name" ]; then SYSTEM_ARGS+=(--ro-bind "/$name" "/$name"); fi
done
SYSTEM_ARGS+=(--dev /dev --proc /proc --tmpfs /run --dir /home --tmpfs /var/tmp)
HIDE_FILES=()
if [ "$(id -u)" = 0 ]; then   # what only root could read: hidden, as runbox does
  for f in /etc/shadow /etc/shadow- /etc/gshadow /etc/gshadow- /etc/sudoers /etc/security/opasswd; do
    [ -f "$f" ] && [ ! -L "$f" ] && HIDE_FILES+=("$f")
  done
  for d in /etc/sudoers.d /etc/ssl/private /var/lib/docker /var/lib/containerd /var/lib/postgresql \
           /var/lib/mysql /var/mail /var/spool/cron /var/log; do
    [ -d "$d" ] && [ ! -L "$d" ] && SYSTEM_ARGS+=(--tmpfs "$d")
  done
fi

# Runs inside the sandbox, in /app; $1 = start commit, $2 = branch, $3 = agent line. jq runs once
# per task on each side of the sandbox (a jq start costs about 16 ms of CPU: once per field would
# add a fifth to the batch's CPU); test script texts cross the tab-separated lines in base64.
INSIDE='
git clone -q /task/repo.bundle /app/repo && cd /app/repo && git checkout -q -B "$2" "$1" || exit 1
bash -c "$3" > /app/agent.log 2>&1
echo "$?" > /app/agent_exit
git add -A && git diff --cached --binary > /app/diff.patch && git reset -q
: > /app/results.txt
i=0
while IFS=$'"'"'\t'"'"' read -r path content; do
  mkdir -p "$(dirname "$path")"
  base64 -d <<< "$content" > "$path"
  python3 -m pytest -q -p no:cacheprovider "$path" < /dev/null > "/app/test-$i.txt" 2>&1
  echo "$? $path" >> /app/results.txt
  i=$((i + 1))
done < <(jq -r ".evaluation.test_scripts[] | [.path, (.content | @base64)] | @tsv" /app/tb_meta.json)
'

run_one() {
  local task=$1 run
  run=$OUT/$(basename "$task")
  mkdir -p "$run/app" "$run/tmp" "$run/home"
  : > "$run/empty"
  cp "$task/tb_meta.json" "$run/app/tb_meta.json"
  local bundle start branch
  IFS=$'\t' read -r bundle start branch < <(jq -r '.repo | [.git_url, .start_commit_sha, .branch // "main"] | @tsv' \
                                              "$task/tb_meta.json")
  local hide=()
  for f in "${HIDE_FILES[@]}"; do hide+=(--ro-bind "$run/empty" "$f"); done
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      TERM=dumb PYTHONDONTWRITEBYTECODE=1 \
    bwrap --die-with-parent --new-session --cap-drop ALL --unshare-pid --unshare-ipc --unshare-uts \
      --unshare-cgroup-try --hostname sandbox "${SYSTEM_ARGS[@]}" "${hide[@]}" \
      --bind "$run/app" /app --bind "$run/tmp" /tmp --bind "$run/home" /root \
      --ro-bind "$bundle" /task/repo.bundle --remount-ro / --chdir /app \
      -- bash -c "$INSIDE" inside "$start" "$branch" "$AGENT" > "$run/sandbox.log" 2>&1 ||
    echo "sandbox exited with status $?" >> "$run/sandbox.log"   # one failed task stops nothing
}

export OUT AGENT INSIDE
export SYSTEM_ARGS_STR HIDE_FILES_STR
# arrays do not cross exec: each worker gets them as space-separated words (no spaces in these paths)
SYSTEM_ARGS_STR=${SYSTEM_ARGS[*]}
HIDE_FILES_STR=${HIDE_FILES[*]}
export -f run_one
find "$TASKS" -mindepth 1 -maxdepth 1 -type d -print0 | sort -z |
  xargs -0 -P "$PARALLEL" -I{} bash -c \
    'read -ra SYSTEM_ARGS <<< "$SYSTEM_ARGS_STR"; read -ra HIDE_FILES <<< "$HIDE_FILES_STR"; run_one "$1"' _ {}
