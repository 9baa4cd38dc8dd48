#!/usr/bin/env bash
# experiment.sh — walk an experiment through SURVEY → FRAME → RUN → READ → LOG, one coding
# agent per phase. Settings: flag > environment > .orchestration-kit.env > default.
# Everything that parses, renders or checks is in researchkit_py/experiment/cli.py: a phase
# costs two Python starts (`begin`, `end`); bash keeps the process control and the agent call.
set -euo pipefail

KIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=("$KIT_ROOT/tools/_py")

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  BOLD=$'\e[1m' GREEN=$'\e[32m' YELLOW=$'\e[33m' CYAN=$'\e[36m' NC=$'\e[0m'
else
  BOLD="" GREEN="" YELLOW="" CYAN="" NC=""
fi

# The commands, written once: name, function, arguments, what it does. `help` prints this
# table, the dispatcher reads it, and the tests compare README's command list with `help`.
COMMANDS="\
survey|run_survey|<question> [--pi-directive TEXT]|SURVEY: what is known, what to test next
frame|run_frame|<spec>|FRAME: make the spec complete and checkable
run|run_run|<spec>|RUN: execute the experiment (on the cloud if COMPUTE_TARGET says so)
read|run_read|<spec>|READ: judge metrics.json against the success criteria
log|run_log|<spec>|LOG: record the verdict and commit on experiment/<id>
cycle|run_cycle|<spec>|FRAME → RUN → sync → READ → LOG
full|run_full|<question> <spec>|SURVEY → FRAME → RUN → sync → READ → LOG
batch|run_batch|<spec>...|RUN + sync for several specs in parallel
program|run_program|[--max-cycles N] [--time-budget S] [--wall-hours H] [--skip-handoffs] [--overnight] [--dry-run]|answer QUESTIONS.md one cycle at a time, within budgets
status|cmd_status||experiments, verdicts, program state, pending handoff
synthesize|run_synthesize|[reason]|rewrite SYNTHESIS.md from everything logged
validate-handoff|cmd_validate_handoff||check HANDOFF.md is complete enough for a human
complete-handoff|cmd_complete_handoff||mark HANDOFF.md done and archive it
watch|cmd_watch|[phase]|follow a phase log as readable lines
help|cmd_help||this list"

abort() { echo "experiment.sh: $*" >&2; exit 1; }
# command_row NAME: that command's line of the table (nothing for an unknown name).
command_row() {
  local line
  while IFS= read -r line; do
    if [[ "${line%%|*}" == "$1" ]]; then echo "$line"; return; fi
  done <<<"$COMMANDS"
}
# usage MESSAGE COMMAND: the message and that command's usage from the table, exit 2.
usage() {
  local args
  IFS='|' read -r _ _ args _ <<<"$(command_row "$2")"
  echo "experiment.sh: $1" >&2
  echo "usage: experiment.sh $2${args:+ $args}" >&2
  exit 2
}
note() { echo -e "$*"; }
kit() { "${PY[@]}" researchkit_py.experiment.cli "$@"; }

# phase_begin PHASE ARGS...: settings, agent, spec, locks and prompt in one Python call; it
# prints assignments (every value shell-quoted: nothing from a file or spec runs) — the
# settings (exported), SPEC_ID, RESULTS_PATH, PROMPT_FILE, LOCK_RECORD, PHASE_BUDGET, and the
# agent CLI's flags and environment for this phase (AGENT_FLAGS, AGENT_ENV), …
phase_begin() {
  local assignments
  SPEC_ID="" SPEC_TITLE="" RESULTS_PATH="" PHASE_BUDGET="" VERDICT="" SURVEY_FILE=""
  PROMPT_FILE="" LOCK_RECORD="" AGENT_FLAGS=() AGENT_ENV=()
  assignments="$(kit begin "$@")" || exit 1
  eval "$assignments"
  if [[ -n "$LOCK_RECORD" ]]; then LOCK_RECORDS+=("$LOCK_RECORD"); fi
}

# phase_end PHASE RC ARGS...: unlock, the agent's summary, the phase's own check (one line
# and exit 1 when it fails; the EXIT trap then finds nothing left to unlock).
phase_end() {
  local phase="$1" rc="$2"
  shift 2
  kit end "$phase" --rc "$rc" --log "$EXP_LOG_DIR/$phase.log" --lock-record "$LOCK_RECORD" --budget "$PHASE_BUDGET" \
    "$@" || exit 1
  LOCK_RECORDS=()
}

# ---------- guardrails: files locked for a phase, restored on any exit ----------
LOCK_RECORDS=()
AGENT_PID=""
release_locks() {
  if [[ ${#LOCK_RECORDS[@]} -gt 0 ]]; then kit unlock "${LOCK_RECORDS[@]}" || true; fi
  LOCK_RECORDS=()
}
on_signal() {
  # The agent leads a process group of its own (see invoke_agent): stop all of it. An attached
  # cloud-run in it stops its run (the VM uploads its log and results, then goes) and pulls what
  # was kept: wait for the group to empty, 300 s at most (cloud-run bounds its own wait).
  local pgid="$AGENT_PID" waited=0
  if [[ -n "$pgid" ]]; then
    kill -TERM -- "-$pgid" 2>/dev/null || kill -TERM "$pgid" 2>/dev/null || true
    while kill -0 -- "-$pgid" 2>/dev/null && ((waited < 3000)); do
      if ((waited == 10)); then note "${YELLOW}Stopping the agent and its cloud run...${NC}"; fi
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  release_locks
  exit "$1"
}
install_traps() {
  trap release_locks EXIT
  trap 'on_signal 130' INT
  trap 'on_signal 143' TERM
  trap 'on_signal 129' HUP
}

# ---------- the agent call ----------
# invoke_agent PHASE [scripted-agent args...]; the prompt is $PROMPT_FILE, the flags and
# environment of the agent's CLI for this phase AGENT_FLAGS and AGENT_ENV (kit begin). Its exit
# code is the agent's, 124 when the phase's budget (PHASE_BUDGET seconds) stopped it.
invoke_agent() {
  local phase="$1" log rc=0 task t0=$SECONDS
  shift
  mkdir -p "$EXP_LOG_DIR"
  log="$EXP_LOG_DIR/$phase.log"
  task="Carry out the ${phase^^} phase exactly as your instructions describe."
  local -a cmd
  case "$EXP_AGENT" in
    claude)
      cmd=(claude -p "$task" --append-system-prompt "$(cat "$PROMPT_FILE")" --output-format stream-json --verbose
        "${AGENT_FLAGS[@]}") ;;
    codex)
      cmd=(codex exec --json "${AGENT_FLAGS[@]}" "$(cat "$PROMPT_FILE")"$'\n\n'"$task") ;;
    scripted)
      cmd=("${PY[@]}" researchkit_py.agents.scripted "$phase" --prompt "$PROMPT_FILE" "$@") ;;
  esac
  # timeout puts the agent in a process group of its own and signals the whole group (on its
  # budget, and when on_signal stops it): codex's npm wrapper would leave codex running.
  # In the background so that a Ctrl-C here reaches on_signal at once.
  env ${AGENT_ENV[@]+"${AGENT_ENV[@]}"} timeout --kill-after=30 "$PHASE_BUDGET" "${cmd[@]}" \
    >"$log" 2>"$log.stderr" </dev/null &
  AGENT_PID=$!
  wait "$AGENT_PID" || rc=$?
  AGENT_PID=""
  if [[ ($rc -eq 124 || $rc -eq 137) && $((SECONDS - t0)) -ge $PHASE_BUDGET ]]; then
    rc=124  # recorded in the phase log, where watch and the summary show it
    printf '{"type":"result","subtype":"error_budget","is_error":true,"result":"researchkit stopped the agent: %s ran past its time budget of %s s"}\n' \
      "${phase^^}" "$PHASE_BUDGET" >>"$log"
  fi
  return "$rc"
}

require_spec() {
  [[ -n "${1:-}" ]] || usage "missing the spec file" "$2"
  [[ -f "$1" ]] || abort "spec $1 not found; specs live in experiments/ (copy templates/experiment-spec.md)"
}

# ---------- phases ----------
run_survey() {
  local question="" directive="" rc=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --pi-directive) [[ $# -ge 2 ]] || usage "--pi-directive needs a value" survey
        directive="$2"; shift 2 ;;
      *) [[ -z "$question" ]] || usage "unexpected argument: $1" survey
        question="$1"; shift ;;
    esac
  done
  [[ -n "$question" ]] || usage "missing the question" survey
  phase_begin survey --question "$question" --pi-directive "$directive"
  note "${CYAN}── SURVEY ──${NC}"
  invoke_agent survey --question "$question" --pi-directive "$directive" --survey-file "$SURVEY_FILE" || rc=$?
  phase_end survey "$rc"
}

run_frame() {
  local spec="${1:-}" rc=0
  [[ -n "$spec" ]] || usage "missing the spec file" frame
  phase_begin frame --spec "$spec"
  note "${CYAN}── FRAME $spec ──${NC}"
  invoke_agent frame --spec "$spec" || rc=$?
  phase_end frame "$rc" --spec "$spec"
}

run_run() {
  local spec="${1:-}" rc=0
  require_spec "$spec" run
  phase_begin run --spec "$spec"
  note "${CYAN}── RUN $SPEC_ID (compute: $COMPUTE_TARGET) ──${NC}"
  invoke_agent run --spec "$spec" --results "$RESULTS_PATH" || rc=$?
  phase_end run "$rc" --spec-id "$SPEC_ID" --results "$RESULTS_PATH"
}

# Pull results from the cloud after a remote RUN phase. No-op unless COMPUTE_TARGET is a cloud target.
sync_results() {
  [[ "$IS_CLOUD" == 1 ]] || return 0
  local results_path="$RESULTS_PATH" okit="$ORCHESTRATION_KIT_ROOT" cloud_run_id
  note "${CYAN}── Syncing results from cloud... ──${NC}"
  if [[ -f "$results_path/.cloud-run-id" ]]; then
    cloud_run_id="$(tr -d '[:space:]' <"$results_path/.cloud-run-id")"
    note "  Pulling results for cloud-run: $cloud_run_id"
    # --wait: a run still going (its RUN was cut short, or it was detached) is waited for, with
    # progress lines, until its deadline at most; then pulled.
    "$okit/tools/cloud-run" pull "$cloud_run_id" --output-dir "$results_path" --wait ||
      note "${YELLOW}  cloud-run pull failed, trying artifact-store hydrate...${NC}"
  fi
  # Fallback: hydrate any artifact-store links
  if [[ -x "$okit/tools/artifact-store" ]]; then
    "$okit/tools/artifact-store" hydrate "$results_path" 2>/dev/null || true
  fi
  if [[ -f "$results_path/metrics.json" ]]; then
    note "  ${GREEN}Results synced:${NC} $results_path/metrics.json exists"
  else
    note "  ${YELLOW}Warning: metrics.json not found in $results_path after sync${NC}"
  fi
  # The RUN record follows the pull: READ judges only what the run itself produced.
  kit record-run "$results_path"
}

run_read() {
  local spec="${1:-}" rc=0
  require_spec "$spec" read
  phase_begin read --spec "$spec"
  note "${CYAN}── READ $SPEC_ID ──${NC}"
  invoke_agent read --spec "$spec" --results "$RESULTS_PATH" || rc=$?
  phase_end read "$rc" --spec-id "$SPEC_ID" --results "$RESULTS_PATH"
}

run_log() {
  local spec="${1:-}" rc=0
  require_spec "$spec" log
  phase_begin log --spec "$spec"
  note "${CYAN}── LOG $SPEC_ID ──${NC}"
  invoke_agent log --spec "$spec" --results "$RESULTS_PATH" || rc=$?
  phase_end log "$rc"
  commit_experiment "$spec"
}

# Commit only the experiment's own files, on experiment/<id>, without touching the work
# tree or the checked-out branch (so nothing in flight — program state, logs — is lost).
commit_experiment() {
  local spec="$1" branch parent="" tmp tree commit files=()
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { note "  (not a git repository: nothing committed)"; return 0; }
  branch="experiment/$SPEC_ID"
  parent="$(git rev-parse -q --verify "refs/heads/$branch" || git rev-parse -q --verify HEAD || true)"
  for f in "$spec" "$RESULTS_PATH" RESEARCH_LOG.md QUESTIONS.md; do [[ -e "$f" ]] && files+=("$f"); done
  tmp="$(mktemp -d)"
  (
    export GIT_INDEX_FILE="$tmp/index"
    if [[ -n "$parent" ]]; then git read-tree "$parent"; else git read-tree --empty; fi
    git add -f -- "${files[@]}"
    git write-tree >"$tmp/tree"
  )
  tree="$(cat "$tmp/tree")"
  rm -rf "$tmp"
  if [[ -n "$parent" && "$tree" == "$(git rev-parse "$parent^{tree}")" ]]; then
    note "  nothing new to commit on $branch"
    return 0
  fi
  commit="$(with_git_identity git commit-tree "$tree" ${parent:+-p "$parent"} -m "experiment $SPEC_ID: ${VERDICT:-no verdict} — $SPEC_TITLE")"
  git update-ref "refs/heads/$branch" "$commit"
  note "  committed ${commit:0:10} on $branch"
  if [[ -n "$(git remote)" ]] && command -v gh >/dev/null 2>&1; then
    if git push -q -u "$(git remote | head -n1)" "$branch" && ! gh pr view "$branch" >/dev/null 2>&1; then
      gh pr create --head "$branch" --title "experiment $SPEC_ID: ${VERDICT:-no verdict}" \
        --body "Results and analysis for $SPEC_ID ($SPEC_TITLE)." || note "${YELLOW}  could not open a PR${NC}"
    fi
  fi
}

with_git_identity() {
  if [[ -z "$(git config user.name || true)" ]]; then
    GIT_AUTHOR_NAME=researchkit GIT_COMMITTER_NAME=researchkit \
      GIT_AUTHOR_EMAIL=researchkit@localhost GIT_COMMITTER_EMAIL=researchkit@localhost "$@"
  else
    "$@"
  fi
}

# ---------- composites ----------
# FRAME -> RUN -> sync -> READ: the sequence every composite shares (results come back
# from the cloud before READ judges them).
frame_to_read() {
  local spec_file="$1"
  run_frame "$spec_file"
  note "\n${YELLOW}--- Frame complete. Running experiment... ---${NC}\n"
  run_run "$spec_file"
  sync_results
  note "\n${YELLOW}--- Run complete. Analyzing results... ---${NC}\n"
  run_read "$spec_file"
}

run_cycle() {
  local spec_file="${1:-}"
  require_spec "$spec_file" cycle
  note "${BOLD}Running experiment cycle: FRAME -> RUN -> READ -> LOG${NC}\n"
  frame_to_read "$spec_file"
  note "\n${YELLOW}--- Analysis complete. Logging... ---${NC}\n"
  run_log "$spec_file"
  note "\n${BOLD}${GREEN}Experiment cycle complete.${NC}"
}

run_full() {
  local question="${1:-}" spec_file="${2:-}"
  [[ -n "$question" && -n "$spec_file" ]] || usage "needs a question and a spec file" full
  note "${BOLD}Running full research cycle: SURVEY -> FRAME -> RUN -> READ -> LOG${NC}\n"
  run_survey "$question"
  note "\n${YELLOW}--- Survey complete. Designing experiment... ---${NC}\n"
  frame_to_read "$spec_file"
  note "\n${YELLOW}--- Analysis complete. Logging... ---${NC}\n"
  run_log "$spec_file"
  note "\n${BOLD}${GREEN}Full research cycle complete.${NC}"
}

# shellcheck source=lib/batch-program.sh
source "$KIT_ROOT/lib/batch-program.sh"

cmd_status() { kit status; }
cmd_validate_handoff() { kit handoff validate; }
cmd_complete_handoff() { kit handoff complete; }
cmd_watch() { kit watch "${1:-}"; }

run_synthesize() {
  local reason="${1:-requested}" rc=0
  phase_begin synthesize --reason "$reason"
  note "${CYAN}── SYNTHESIZE ──${NC}"
  invoke_agent synthesize --reason "$reason" --results-root "$RESULTS_ROOT" || rc=$?
  phase_end synthesize "$rc"
}

cmd_help() {
  local name fn args what
  echo "usage: experiment.sh <command> [args]"
  echo
  while IFS='|' read -r name fn args what; do
    printf '  %-42s %s\n' "$name${args:+ $args}" "$what"
  done <<<"$COMMANDS"
  echo
  echo "Settings (environment or .orchestration-kit.env): COMPUTE_TARGET, EXP_AGENT, KIT_STATE_DIR, EXP_LOG_DIR."
  echo "All settings: docs/settings.md."
}

main() {
  local command_name="${1:-help}" row fn
  [[ $# -gt 0 ]] && shift
  case "$command_name" in -h | --help) command_name=help ;; esac
  row="$(command_row "$command_name")"
  if [[ -z "$row" ]]; then
    echo "experiment.sh: unknown command '$command_name'" >&2
    cmd_help >&2
    exit 2
  fi
  IFS='|' read -r _ fn _ <<<"$row"
  if [[ "$command_name" == help ]]; then cmd_help; return; fi
  PROJECT_ROOT="${EXP_PROJECT_ROOT:-$PWD}"
  [[ -d "$PROJECT_ROOT" ]] || abort "EXP_PROJECT_ROOT=$PROJECT_ROOT is not a directory"
  cd "$PROJECT_ROOT"
  install_traps
  "$fn" "$@"
}

main "$@"
