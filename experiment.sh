#!/usr/bin/env bash
# experiment.sh — walk an experiment through SURVEY → FRAME → RUN → READ → LOG, one coding
# agent per phase. Settings: flag > environment > .orchestration-kit.env > default.
set -euo pipefail

KIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=("$KIT_ROOT/tools/_py")

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  BOLD=$'\e[1m' GREEN=$'\e[32m' YELLOW=$'\e[33m' CYAN=$'\e[36m' NC=$'\e[0m'
else
  BOLD="" GREEN="" YELLOW="" CYAN="" NC=""
fi

abort() { echo "experiment.sh: $*" >&2; exit 1; }
usage() { echo "experiment.sh: $1" >&2; echo "usage: experiment.sh $2" >&2; exit 2; }
note() { echo -e "$*"; }
kit() { "${PY[@]}" researchkit_py.kit "$@"; }

# Resolved once, after the command is known (help needs none of it and stays instant).
load_settings() {
  PROJECT_ROOT="${EXP_PROJECT_ROOT:-$PWD}"
  [[ -d "$PROJECT_ROOT" ]] || abort "EXP_PROJECT_ROOT=$PROJECT_ROOT is not a directory"
  cd "$PROJECT_ROOT"
  local env_exports
  env_exports="$(kit env-file .orchestration-kit.env)" || exit 1
  eval "$env_exports"  # every value is shell-quoted by the helper; nothing from the file runs
  TOOLS_ROOT_CONFIGURED="${ORCHESTRATION_KIT_ROOT:+1}"
  export COMPUTE_TARGET="${COMPUTE_TARGET:-local}"
  export KIT_STATE_DIR="${KIT_STATE_DIR:-.kit-state}"
  export EXP_LOG_DIR="${EXP_LOG_DIR:-$KIT_STATE_DIR/logs}"
  export ORCHESTRATION_KIT_ROOT="${ORCHESTRATION_KIT_ROOT:-$KIT_ROOT}"
  export RESULTS_ROOT="${RESULTS_ROOT:-results}"
  export DATA_DIR="${DATA_DIR:-data}"
  export EXP_AGENT="${EXP_AGENT:-}"
  case "$COMPUTE_TARGET" in
    local | ec2 | gce | sandbox) ;;
    *) abort "COMPUTE_TARGET=$COMPUTE_TARGET is not one of local, ec2, gce, sandbox; fix it in .orchestration-kit.env" ;;
  esac
  mkdir -p "$KIT_STATE_DIR"
  [[ -f "$KIT_STATE_DIR/.gitignore" ]] || echo '*' >"$KIT_STATE_DIR/.gitignore"  # state is never committed
}

is_cloud_target() { [[ "$COMPUTE_TARGET" != "local" ]]; }

resolve_agent() {
  case "$EXP_AGENT" in
    "")
      command -v claude >/dev/null 2>&1 ||
        abort "no agent: install Claude Code (npm install -g @anthropic-ai/claude-code) or set EXP_AGENT=scripted"
      EXP_AGENT=claude ;;
    claude | codex)
      command -v "$EXP_AGENT" >/dev/null 2>&1 ||
        abort "EXP_AGENT=$EXP_AGENT but '$EXP_AGENT' is not on PATH; install it or set EXP_AGENT=scripted" ;;
    scripted) ;;
    *) abort "EXP_AGENT=$EXP_AGENT is not one of claude, codex, scripted" ;;
  esac
  export EXP_AGENT
}

require_spec() {
  [[ -n "${1:-}" ]] || usage "missing the spec file" "$2"
  [[ -f "$1" ]] || abort "spec $1 not found; specs live in experiments/ (copy templates/experiment-spec.md)"
}

# Sets SPEC_ID, SPEC_TITLE, RESULTS_PATH and RUN_BUDGET_SECONDS from the spec.
load_spec() {
  local assignments
  SPEC_ID="" SPEC_TITLE="" RESULTS_PATH="" RUN_BUDGET_SECONDS=""
  assignments="$(kit spec-env "$1")" || exit 1
  eval "$assignments"
}

# $RESULTS_ROOT/<spec file stem>: the same path spec-env's RESULTS_PATH names, without parsing the spec.
results_dir_for_spec() { local name; name="$(basename "$1")"; echo "$RESULTS_ROOT/${name%.*}"; }

# ---------- guardrails: files locked for a phase, restored on any exit ----------
LOCK_RECORDS=()
AGENT_PID=""
release_locks() {
  local r
  for r in "${LOCK_RECORDS[@]+"${LOCK_RECORDS[@]}"}"; do kit unlock "$r" || true; done
  LOCK_RECORDS=()
}
on_signal() {
  if [[ -n "$AGENT_PID" ]]; then kill -TERM "$AGENT_PID" 2>/dev/null || true; fi
  release_locks
  exit "$1"
}
install_traps() {
  trap release_locks EXIT
  trap 'on_signal 130' INT
  trap 'on_signal 143' TERM
}

# lock_paths NAME MODE PATH... — MODE is an octal file mode, or - for "remove write bits".
lock_paths() {
  local record="$KIT_STATE_DIR/locks/$1.$BASHPID.json" mode="$2"
  shift 2
  [[ $# -gt 0 ]] || return 0
  LOCK_RECORDS+=("$record")
  kit lock "$record" "$mode" "$@"
}

# ---------- the agent call ----------
phase_tools() {
  case "$1" in
    survey) echo "Read,Grep,Glob,WebSearch,WebFetch,Write,Edit" ;;
    run) echo "Read,Grep,Glob,Write,Edit,Bash" ;;
    read) echo "Read,Grep,Glob,Write,Bash" ;;
    *) echo "Read,Grep,Glob,Write,Edit" ;;
  esac
}

# invoke_agent PHASE PROMPT_FILE [scripted-agent args...]; honours AGENT_BUDGET (seconds).
invoke_agent() {
  local phase="$1" prompt="$2" log rc=0 task
  shift 2
  mkdir -p "$EXP_LOG_DIR"
  log="$EXP_LOG_DIR/$phase.log"
  task="Carry out the ${phase^^} phase exactly as your instructions describe."
  local -a cmd
  case "$EXP_AGENT" in
    claude)
      cmd=(claude -p "$task" --append-system-prompt "$(cat "$prompt")" --output-format stream-json --verbose
        --allowedTools "$(phase_tools "$phase")" --settings "$(kit guard-settings "$KIT_ROOT/tools/guard-hook")") ;;
    codex)
      cmd=(codex exec --json --full-auto "$(cat "$prompt")"$'\n\n'"$task") ;;
    scripted)
      cmd=("${PY[@]}" researchkit_py.agents.scripted "$phase" --prompt "$prompt" "$@") ;;
  esac
  if [[ -n "${AGENT_BUDGET:-}" ]]; then cmd=(timeout --kill-after=30 "$AGENT_BUDGET" "${cmd[@]}"); fi
  # In the background so a Ctrl-C here can stop it (timeout runs it in its own process group).
  "${cmd[@]}" >"$log" 2>"$log.stderr" </dev/null &
  AGENT_PID=$!
  wait "$AGENT_PID" || rc=$?
  AGENT_PID=""
  kit summary "$log" | sed 's/^/  /'
  if [[ -s "$log.stderr" ]]; then sed 's/^/  ! /' "$log.stderr" | tail -n 5 >&2; fi
  return "$rc"
}

prompt_file() { mkdir -p "$KIT_STATE_DIR/prompts"; echo "$KIT_STATE_DIR/prompts/$1.$BASHPID.md"; }

# ---------- phases ----------
#: survey <question> [--pi-directive TEXT]   SURVEY: what is known, what to test next
run_survey() {
  local question="" directive="" survey_file prompt
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --pi-directive) [[ $# -ge 2 ]] || usage "--pi-directive needs a value" "survey <question> [--pi-directive TEXT]"
        directive="$2"; shift 2 ;;
      *) [[ -z "$question" ]] || usage "unexpected argument: $1" "survey <question> [--pi-directive TEXT]"
        question="$1"; shift ;;
    esac
  done
  [[ -n "$question" ]] || usage "missing the question" "survey <question> [--pi-directive TEXT]"
  resolve_agent
  survey_file="surveys/$(date +%Y%m%d-%H%M%S)-$(echo "$question" | tr -cs 'A-Za-z0-9' '-' | cut -c1-40 | sed 's/-$//').md"
  prompt="$(prompt_file survey)"
  kit prompt survey --question "$question" --pi-directive "$directive" --survey-file "$survey_file" >"$prompt"
  note "${CYAN}── SURVEY ──${NC}"
  invoke_agent survey "$prompt" --question "$question" --pi-directive "$directive" --survey-file "$survey_file" ||
    abort "SURVEY failed; see $EXP_LOG_DIR/survey.log"
}

#: frame <spec>                              FRAME: make the spec complete and checkable
run_frame() {
  local spec="${1:-}" prompt
  [[ -n "$spec" ]] || usage "missing the spec file" "frame <spec>"
  resolve_agent
  prompt="$(prompt_file frame)"
  kit prompt frame --spec "$spec" >"$prompt"
  note "${CYAN}── FRAME $spec ──${NC}"
  invoke_agent frame "$prompt" --spec "$spec" || abort "FRAME failed for $spec; see $EXP_LOG_DIR/frame.log"
  kit validate "$spec" || exit 1  # whatever the agent did, RUN starts only from a complete spec
}

#: run <spec>                                RUN: execute the experiment (on the cloud if COMPUTE_TARGET says so)
run_run() {
  local spec="${1:-}" prompt rc=0 others=()
  require_spec "$spec" "run <spec>"
  resolve_agent
  load_spec "$spec"
  mkdir -p "$RESULTS_PATH"
  if [[ -f "$RESULTS_PATH/spec.md" ]]; then chmod u+w "$RESULTS_PATH/spec.md"; fi
  cp "$spec" "$RESULTS_PATH/spec.md"  # the frozen copy READ judges against
  chmod 444 "$RESULTS_PATH/spec.md"
  lock_paths "run-$SPEC_ID" 444 "$spec"
  if [[ -z "${EXP_RESULTS_LOCKED:-}" ]]; then
    mapfile -t others < <(kit other-results "$SPEC_ID")
    lock_paths "results-$SPEC_ID" - "${others[@]+"${others[@]}"}"
  fi
  prompt="$(prompt_file run)"
  kit prompt run --spec "$spec" --advisory "$(compute_advisory "$spec")" >"$prompt"
  note "${CYAN}── RUN $SPEC_ID (compute: $COMPUTE_TARGET) ──${NC}"
  AGENT_BUDGET="$RUN_BUDGET_SECONDS" invoke_agent run "$prompt" --spec "$spec" --results "$RESULTS_PATH" || rc=$?
  release_locks
  if [[ $rc -eq 124 ]]; then
    kit abort-metrics "$RESULTS_PATH" "RUN exceeded its time budget of ${RUN_BUDGET_SECONDS}s"
    abort "RUN of $SPEC_ID exceeded its time budget (${RUN_BUDGET_SECONDS}s); $RESULTS_PATH/metrics.json records the abort"
  fi
  [[ $rc -eq 0 ]] || abort "RUN of $SPEC_ID failed (exit $rc); see $EXP_LOG_DIR/run.log"
}

# The preflight advisory for local runs when a tools root is configured (ORCHESTRATION_KIT_ROOT
# set): without one, local RUN is exactly as it always was. Cloud targets get the mandatory
# directive instead (rendered with the prompt).
compute_advisory() {
  if ! is_cloud_target && [[ -n "$TOOLS_ROOT_CONFIGURED" && -x "$ORCHESTRATION_KIT_ROOT/tools/preflight" ]]; then
    "$ORCHESTRATION_KIT_ROOT/tools/preflight" "$1" 2>/dev/null || true
  fi
}

# Pull results from the cloud after a remote RUN phase. No-op unless COMPUTE_TARGET is a cloud target.
sync_results() {
  local spec_file="$1" results_path
  results_path="$(results_dir_for_spec "$spec_file")"
  is_cloud_target || return 0

  note "${CYAN}── Syncing results from cloud... ──${NC}"
  local okit="$ORCHESTRATION_KIT_ROOT"
  local cloud_run_id_file="$results_path/.cloud-run-id"
  if [[ -f "$cloud_run_id_file" ]]; then
    local cloud_run_id
    cloud_run_id="$(tr -d '[:space:]' <"$cloud_run_id_file")"
    note "  Pulling results for cloud-run: $cloud_run_id"
    "$okit/tools/cloud-run" pull "$cloud_run_id" --output-dir "$results_path" ||
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
}

#: read <spec>                               READ: judge metrics.json against the success criteria
run_read() {
  local spec="${1:-}" prompt rc=0 verdict
  require_spec "$spec" "read <spec>"
  resolve_agent
  load_spec "$spec"
  [[ -d "$RESULTS_PATH" ]] || abort "no results for $SPEC_ID in $RESULTS_PATH; run it first (experiment.sh run $spec)"
  lock_paths "read-$SPEC_ID" 444 "$spec" "$RESULTS_PATH/spec.md" "$RESULTS_PATH/metrics.json"
  prompt="$(prompt_file read)"
  kit prompt read --spec "$spec" >"$prompt"
  note "${CYAN}── READ $SPEC_ID ──${NC}"
  EXP_GUARD_PATHS="$spec:$RESULTS_PATH/spec.md:$RESULTS_PATH/metrics.json" \
    invoke_agent read "$prompt" --spec "$spec" --results "$RESULTS_PATH" || rc=$?
  release_locks
  [[ $rc -eq 0 ]] || abort "READ of $SPEC_ID failed (exit $rc); see $EXP_LOG_DIR/read.log"
  verdict="$(kit verdict "$RESULTS_PATH")"
  [[ -n "$verdict" ]] || abort "READ wrote no '## Verdict:' line in $RESULTS_PATH/analysis.md"
  note "  ${BOLD}Verdict: $verdict${NC}"
}

#: log <spec>                                LOG: record the verdict and commit on experiment/<id>
run_log() {
  local spec="${1:-}" prompt
  require_spec "$spec" "log <spec>"
  resolve_agent
  load_spec "$spec"
  prompt="$(prompt_file log)"
  kit prompt log --spec "$spec" >"$prompt"
  note "${CYAN}── LOG $SPEC_ID ──${NC}"
  invoke_agent log "$prompt" --spec "$spec" --results "$RESULTS_PATH" || abort "LOG failed; see $EXP_LOG_DIR/log.log"
  commit_experiment "$spec"
}

# Commit only the experiment's own files, on experiment/<id>, without touching the work
# tree or the checked-out branch (so nothing in flight — program state, logs — is lost).
commit_experiment() {
  local spec="$1" branch parent="" tmp tree commit verdict files=()
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { note "  (not a git repository: nothing committed)"; return 0; }
  branch="experiment/$SPEC_ID"
  verdict="$(kit verdict "$RESULTS_PATH")"
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
  commit="$(with_git_identity git commit-tree "$tree" ${parent:+-p "$parent"} -m "experiment $SPEC_ID: ${verdict:-no verdict} — $SPEC_TITLE")"
  git update-ref "refs/heads/$branch" "$commit"
  note "  committed ${commit:0:10} on $branch"
  if [[ -n "$(git remote)" ]] && command -v gh >/dev/null 2>&1; then
    if git push -q -u "$(git remote | head -n1)" "$branch" && ! gh pr view "$branch" >/dev/null 2>&1; then
      gh pr create --head "$branch" --title "experiment $SPEC_ID: ${verdict:-no verdict}" \
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
  sync_results "$spec_file"
  note "\n${YELLOW}--- Run complete. Analyzing results... ---${NC}\n"
  run_read "$spec_file"
}

#: cycle <spec>                              FRAME → RUN → sync → READ → LOG
run_cycle() {
  local spec_file="${1:-}"
  require_spec "$spec_file" "cycle <spec>"
  note "${BOLD}Running experiment cycle: FRAME -> RUN -> READ -> LOG${NC}\n"
  frame_to_read "$spec_file"
  note "\n${YELLOW}--- Analysis complete. Logging... ---${NC}\n"
  run_log "$spec_file"
  note "\n${BOLD}${GREEN}Experiment cycle complete.${NC}"
}

#: full <question> <spec>                    SURVEY → FRAME → RUN → sync → READ → LOG
run_full() {
  local question="${1:-}" spec_file="${2:-}"
  [[ -n "$question" && -n "$spec_file" ]] || usage "needs a question and a spec file" "full <question> <spec>"
  note "${BOLD}Running full research cycle: SURVEY -> FRAME -> RUN -> READ -> LOG${NC}\n"
  run_survey "$question"
  note "\n${YELLOW}--- Survey complete. Designing experiment... ---${NC}\n"
  frame_to_read "$spec_file"
  note "\n${YELLOW}--- Analysis complete. Logging... ---${NC}\n"
  run_log "$spec_file"
  note "\n${BOLD}${GREEN}Full research cycle complete.${NC}"
}

#: batch <spec>...                          RUN + sync for several specs in parallel
#: program [--max-cycles N] [--time-budget S] [--wall-hours H] [--skip-handoffs] [--overnight] [--dry-run]
#:                                           answer QUESTIONS.md one cycle at a time, within budgets
# shellcheck source=lib/batch-program.sh
source "$KIT_ROOT/lib/batch-program.sh"

#: status                                    experiments, verdicts, program state, pending handoff
cmd_status() { kit status "$KIT_STATE_DIR/program-state.json"; }

#: synthesize [reason]                       rewrite SYNTHESIS.md from everything logged
run_synthesize() {
  local prompt reason="${1:-requested}"
  resolve_agent
  prompt="$(prompt_file synthesize)"
  kit prompt synthesize --reason "$reason" >"$prompt"
  note "${CYAN}── SYNTHESIZE ──${NC}"
  invoke_agent synthesize "$prompt" --reason "$reason" --results-root "$RESULTS_ROOT" ||
    abort "SYNTHESIZE failed; see $EXP_LOG_DIR/synthesize.log"
}

#: validate-handoff                          check HANDOFF.md is complete enough for a human
#: complete-handoff                          mark HANDOFF.md done and archive it
#: watch [phase]                             follow a phase log as readable lines
#: help                                      this list
cmd_help() {
  echo "usage: experiment.sh <command> [args]"
  echo
  sed -n 's/^#: /  /p' "${BASH_SOURCE[0]}"
  echo
  echo "Settings (environment or .orchestration-kit.env): COMPUTE_TARGET, EXP_AGENT, KIT_STATE_DIR, EXP_LOG_DIR."
}

main() {
  local command_name="${1:-help}"
  [[ $# -gt 0 ]] && shift
  case "$command_name" in
    help | -h | --help) cmd_help; return ;;
    survey | frame | run | read | log | cycle | full | batch | program | status | synthesize | \
      validate-handoff | complete-handoff | watch) ;;
    *) echo "experiment.sh: unknown command '$command_name'" >&2; cmd_help >&2; exit 2 ;;
  esac
  load_settings
  install_traps
  case "$command_name" in
    survey) run_survey "$@" ;;
    frame) run_frame "$@" ;;
    run) run_run "$@" ;;
    read) run_read "$@" ;;
    log) run_log "$@" ;;
    cycle) run_cycle "$@" ;;
    full) run_full "$@" ;;
    batch) run_batch "$@" ;;
    program) run_program "$@" ;;
    status) cmd_status ;;
    synthesize) run_synthesize "$@" ;;
    validate-handoff) kit handoff validate || exit 1 ;;
    complete-handoff) kit handoff complete || exit 1 ;;
    watch) kit watch "$EXP_LOG_DIR" "${1:-}" || exit 1 ;;
  esac
}

main "$@"
