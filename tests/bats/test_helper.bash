# Shared setup: every test gets a sandbox project (a copy of examples/toy, a git repo),
# its own HOME and state, and a PATH on which only our stubs stand in for agents and tools.
# Stubs append one line per call to $EVENTS and keep their full arguments in $SANDBOX/calls/.

bats_require_minimum_version 1.5.0

KIT="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
EXP="$KIT/experiment.sh"
SPEC="experiments/exp-001-toy-logreg.md"

setup() {
  # Not under /tmp: the real codex, which pytest runs beside bats, leaves an empty /tmp/.git
  # behind (its sandbox's mount point for the .git of each writable root), and a .git above a
  # project means a git repository to experiment.sh, as to codex itself.
  SANDBOX="$(mktemp -d /var/tmp/rk-bats.XXXXXX)"
  export SANDBOX EVENTS="$SANDBOX/events"
  export HOME="$SANDBOX/home" RK_STATE_HOME="$SANDBOX/state" NO_COLOR=1
  mkdir -p "$HOME" "$SANDBOX/bin" "$SANDBOX/calls" "$SANDBOX/okit/tools"
  touch "$EVENTS"
  unset COMPUTE_TARGET EXP_AGENT KIT_STATE_DIR EXP_LOG_DIR ORCHESTRATION_KIT_ROOT EXP_TIME_BUDGET EXP_PROJECT_ROOT
  cp -R "$KIT/examples/toy" "$SANDBOX/proj"
  rm -f "$SANDBOX/proj/.orchestration-kit.env"
  cd "$SANDBOX/proj"
  git init -q
  git -c user.name=t -c user.email=t@t add -A
  git -c user.name=t -c user.email=t@t commit -qm init
  install_stubs
  export PATH="$SANDBOX/bin:/usr/local/bin:/usr/bin:/bin"
}

teardown() {
  chmod -R u+w "$SANDBOX" 2>/dev/null || true
  if [[ -z "${KEEP_SANDBOX:-}" ]]; then rm -rf "$SANDBOX"; fi
}

# The stub tools root the mandatory directive points at.
use_stub_tools() { export ORCHESTRATION_KIT_ROOT="$SANDBOX/okit"; }

# stub_agent NAME: install a stub agent CLI whose body comes on stdin. It answers --version
# (STUB_<NAME>_VERSION, else the tested version) and records every other call: its arguments
# one per line in $SANDBOX/calls/NAME.N, its environment in $SANDBOX/env/NAME.N.
stub_agent() {
  local name="$1" version
  case "$name" in
    claude) version='${STUB_CLAUDE_VERSION:-2.1.330} (Claude Code)' ;;
    codex) version='codex-cli ${STUB_CODEX_VERSION:-0.169.0}' ;;
  esac
  {
    printf '#!/usr/bin/env bash\n'
    printf 'if [[ "${1:-}" == --version ]]; then echo "%s"; exit 0; fi\n' "$version"
    printf 'n=$(ls "$SANDBOX/calls" | wc -l)\n'
    printf 'printf "%%s\\n" "$@" >"$SANDBOX/calls/%s.$n"\n' "$name"
    printf 'env >"$SANDBOX/env/%s.$n"\n' "$name"
    cat
  } >"$SANDBOX/bin/$name"
  chmod +x "$SANDBOX/bin/$name"
}

install_stubs() {
  mkdir -p "$SANDBOX/env"
  # claude: act out each phase the way a well-behaved agent would (the project has one
  # experiment: its results directory is known). What a real CLI does with the real prompt is
  # tests/py/test_agent_cycles.py's; these stubs test experiment.sh's plumbing.
  stub_agent claude <<'STUB'
system=""; prev=""
for a in "$@"; do [[ "$prev" == --append-system-prompt ]] && system="$a"; prev="$a"; done
phase=$(sed -n 's/^# Phase: //p' <<<"$system" | head -n1)
echo "claude $phase" >>"$EVENTS"
results=results/exp-001-toy-logreg
case "$phase" in
  RUN)
    stat -c '%a' experiments/*.md >"$SANDBOX/spec-mode-during-run"
    if grep -q 'MANDATORY' <<<"$system"; then
      "$ORCHESTRATION_KIT_ROOT/tools/cloud-run" run --output-dir "$results/" >/dev/null
    else
      mkdir -p "$results" && RESULTS_DIR="$results" python3 train.py >/dev/null
    fi
    [[ -z "${STUB_CLAUDE_SLEEP:-}" ]] || sleep "$STUB_CLAUDE_SLEEP"
    [[ -z "${STUB_CLAUDE_FAIL:-}" ]] || exit "$STUB_CLAUDE_FAIL" ;;
  READ) printf '# Analysis\n\n## Verdict: CONFIRMED\n' >"$results/analysis.md" ;;
  LOG) echo "- logged" >>RESEARCH_LOG.md ;;
esac
echo '{"type":"system","subtype":"init","model":"stub"}'
echo '{"type":"assistant","message":{"content":[{"type":"text","text":"working"}]}}'
echo "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"stub $phase done\"}"
STUB
  # codex: print a JSONL session like `codex exec --json`.
  stub_agent codex <<'STUB'
echo "codex $1" >>"$EVENTS"
echo '{"type":"item.completed","item":{"type":"agent_message","text":"codex did it"}}'
echo '{"type":"turn.completed"}'
STUB
  cat >"$SANDBOX/bin/gh" <<'STUB'
#!/usr/bin/env bash
echo "gh $*" >>"$EVENTS"
[[ "$1 $2" != "pr view" ]]
STUB
  # cloud-run: `run` writes results and the pull's record like a real attached run; `pull`
  # records its call (STUB_PULL_FINISHES: the run has ended since, its results come now).
  cat >"$SANDBOX/okit/tools/cloud-run" <<'STUB'
#!/usr/bin/env bash
echo "cloud-run $*" >>"$EVENTS"
cmd="$1"; shift
out=""; prev=""
for a in "$@"; do [[ "$prev" == --output-dir ]] && out="$a"; prev="$a"; done
pulled() {  # what a real pull records: the run's status and each file's verified sha256
  local phase="$1" rc="$2" files="{}"
  if [[ -f "$out/metrics.json" ]]; then files="{\"metrics.json\": [0, 0, \"$(sha256sum "$out/metrics.json" | cut -d' ' -f1)\"]}"; fi
  echo "{\"run_id\": \"stub-run-1\", \"final\": true, \"complete\": true, \"files\": $files,
    \"status\": {\"phase\": \"$phase\", \"cause\": \"exit\", \"exit_code\": $rc, \"message\": \"command exited $rc\"}}" \
    >"$out/.cloud-run-state.json"
}
case "$cmd" in
  run) mkdir -p "$out" && echo "stub-run-1" >"$out/.cloud-run-id"; echo "stub-run-1"
       rc="${STUB_CLOUD_RUN_EXIT:-0}" phase=DONE
       [[ "$rc" == 0 ]] || phase=FAILED
       [[ -n "${STUB_CLOUD_RUN_NO_METRICS:-}" ]] || echo '{"accuracy": 0.95, "baseline_gap": 0.3}' >"$out/metrics.json"
       pulled "${STUB_CLOUD_RUN_PHASE:-$phase}" "$rc"
       exit "$rc" ;;
  pull) if [[ -n "${STUB_PULL_FINISHES:-}" ]]; then
          echo '{"accuracy": 0.95, "baseline_gap": 0.3}' >"$out/metrics.json"; pulled DONE 0
        fi
        exit "${STUB_PULL_EXIT:-0}" ;;
esac
STUB
  cat >"$SANDBOX/okit/tools/artifact-store" <<'STUB'
#!/usr/bin/env bash
echo "artifact-store $*" >>"$EVENTS"
STUB
  chmod +x "$SANDBOX/bin/"* "$SANDBOX/okit/tools/"*
}

# The last recorded call of a stub, one argument per line; last_env: its environment.
last_call() { local f; f=$(ls -t "$SANDBOX/calls/$1".* | head -n1); cat "$f"; }
last_env() { local f; f=$(ls -t "$SANDBOX/env/$1".* | head -n1); cat "$f"; }
events() { cat "$EVENTS"; }
