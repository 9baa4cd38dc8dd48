# shellcheck shell=bash
# batch and program: the composites that run many experiments. Sourced by experiment.sh.

run_batch() {
  [[ $# -gt 0 ]] || usage "needs at least one spec" batch
  local spec ids=() id batch_dir pids=() failed=0 i rc
  for spec in "$@"; do
    require_spec "$spec" batch
    id="$(basename "$spec" .md)"
    for i in "${ids[@]+"${ids[@]}"}"; do [[ "$i" != "$id" ]] || usage "$spec is listed twice" batch; done
    ids+=("$id")
  done
  # Other experiments' results are locked once for the whole batch: the runs in it must not
  # lock (and later unlock) each other's directories.
  phase_begin batch "$@"
  batch_dir="$EXP_LOG_DIR/batch-$(date +%Y%m%d-%H%M%S)-$$"
  mkdir -p "$batch_dir"
  note "${BOLD}Running batch of $#: RUN -> sync, in parallel (logs in $batch_dir)${NC}"
  for spec in "$@"; do
    id="$(basename "$spec" .md)"
    (batch_member "$spec" "$batch_dir/$id") >"$batch_dir/$id.out" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    if [[ $rc -eq 0 ]]; then
      note "  ${GREEN}ok${NC}      ${ids[$i]}"
    else
      failed=$((failed + 1))
      note "  ${YELLOW}FAILED${NC}  ${ids[$i]} (exit $rc; see $batch_dir/${ids[$i]}.out)"
    fi
  done
  release_locks
  [[ $failed -eq 0 ]] || abort "$failed of $# runs in the batch failed"
  note "${BOLD}${GREEN}Batch complete.${NC}"
}

# One run of a batch, in its own subshell: its own logs, its own locks only.
batch_member() {
  set -e
  # shellcheck disable=SC2034  # read by release_locks (experiment.sh): the batch lock stays the parent's
  LOCK_RECORDS=()
  trap release_locks EXIT
  export EXP_LOG_DIR="$2" EXP_RESULTS_LOCKED=1
  run_run "$1"
  sync_results
}

run_program() {
  local max_cycles=10 time_budget="" wall_hours="" skip_handoffs=0 overnight=0 dry_run=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --max-cycles | --time-budget | --wall-hours)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+([.][0-9]+)?$ ]] || usage "$1 needs a number" program
        case "$1" in
          --max-cycles) max_cycles="${2%.*}" ;;
          --time-budget) time_budget="${2%.*}" ;;
          --wall-hours) wall_hours="$2" ;;
        esac
        shift 2 ;;
      --skip-handoffs) skip_handoffs=1; shift ;;
      --overnight) overnight=1; skip_handoffs=1; shift ;;
      --dry-run) dry_run=1; shift ;;
      *) usage "unknown option $1" program ;;
    esac
  done
  if [[ $overnight -eq 1 && -z "$wall_hours" ]]; then wall_hours=10; fi
  if [[ $dry_run -eq 1 ]]; then phase_begin program --dry-run; else phase_begin program; fi
  local start cycles=0 spent=0 attempted=() stop=""
  local QUESTION QUESTION_SPEC spec t0 rc verdict wall_limit=""
  start="$(date +%s)"
  if [[ -n "$wall_hours" ]]; then wall_limit="$(awk -v h="$wall_hours" 'BEGIN { printf "%d", h * 3600 }')"; fi
  note "${BOLD}Research program: up to $max_cycles cycles${time_budget:+, ${time_budget}s of cycles}${wall_hours:+, ${wall_hours}h wall}${NC}"
  while :; do
    if ((cycles >= max_cycles)); then stop="reached --max-cycles $max_cycles"; break; fi
    if [[ -n "$time_budget" ]] && ((spent >= time_budget)); then stop="time budget of ${time_budget}s used"; break; fi
    if [[ -n "$wall_limit" ]] && (($(date +%s) - start >= wall_limit)); then stop="wall-clock limit of ${wall_hours}h reached"; break; fi
    if [[ $skip_handoffs -eq 0 ]] && kit handoff pending 2>/dev/null; then
      stop="a handoff is pending: read HANDOFF.md, then experiment.sh complete-handoff"; break
    fi
    QUESTION="" QUESTION_SPEC=""
    eval "$(kit next-question "${attempted[@]+"${attempted[@]}"}")"
    if [[ -z "$QUESTION" ]]; then stop="no open questions in QUESTIONS.md"; break; fi
    spec="${QUESTION_SPEC:-}"
    attempted+=("${spec:-$QUESTION}")
    if [[ $dry_run -eq 1 ]]; then
      note "  would run: $QUESTION -> ${spec:-(no spec: FRAME must write one)}"
      cycles=$((cycles + 1))
      continue
    fi
    if [[ -z "$spec" ]]; then
      spec="experiments/exp-$(printf '%03d' $(($(find experiments -name 'exp-*.md' 2>/dev/null | wc -l) + 1)))-$(echo "$QUESTION" | tr -cs 'A-Za-z0-9' '-' | tr '[:upper:]' '[:lower:]' | cut -c1-30 | sed 's/-$//').md"
    fi
    note "\n${BOLD}── cycle $((cycles + 1)): $QUESTION ──${NC}"
    t0="$(date +%s)"
    set +e
    (
      set -e
      frame_to_read "$spec"
    )
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then run_log "$spec"; fi
    cycles=$((cycles + 1))
    spent=$((spent + $(date +%s) - t0))
    verdict="$(kit record-cycle "$QUESTION" "$spec" "$rc" "$(($(date +%s) - t0))")"
    note "  cycle $cycles: $verdict"
    if [[ $rc -ne 0 && $overnight -eq 0 ]]; then stop="cycle failed (exit $rc); see $EXP_LOG_DIR"; break; fi
  done
  note "\n${BOLD}Program stopped: $stop after $cycles cycle(s).${NC}"
  [[ "$stop" != cycle\ failed* ]]
}
