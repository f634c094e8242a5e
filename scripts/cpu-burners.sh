#!/usr/bin/env bash
# Run a command beside N CPU-bound processes, as on a busy CI runner or a laptop compiling something:
#
#   scripts/cpu-burners.sh N COMMAND [ARGS...]    # e.g. scripts/cpu-burners.sh 2 make test
#
# The burners are plain busy loops at normal priority (they compete with the command as another job would).
# They are stopped whatever happens to the command (normal exit, failure, Ctrl-C, kill), and the script
# exits with the command's status, so `make test-busy` fails exactly when the tests fail.
set -u

if [ $# -lt 2 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 N COMMAND [ARGS...]   (N CPU burners beside COMMAND, stopped when it ends)" >&2
    exit 2
fi
n=$1
shift

pids=()
cmd=""
stop_burners() {
    if [ ${#pids[@]} -gt 0 ]; then
        kill "${pids[@]}" 2>/dev/null
        wait "${pids[@]}" 2>/dev/null
        echo "cpu-burners: stopped ${#pids[@]} burner(s)" >&2
        pids=()
    fi
}
trap stop_burners EXIT
# a signal to this script goes on to the command too, then ends the script (and the burners, through the
# EXIT trap) with the usual status; Ctrl-C in a terminal reaches the command by itself
on_signal() {
    if [ -n "$cmd" ]; then
        kill "-$1" -- "-$cmd" 2>/dev/null
        wait "$cmd"
    fi
    exit "$2"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

for _ in $(seq 1 "$n"); do
    # a subshell spinning in the shell itself: no helper binary, and SIGTERM ends it at once
    ( trap - EXIT INT TERM HUP; while :; do :; done ) &
    pids+=($!)
done
echo "cpu-burners: ${#pids[@]} CPU-bound process(es) running (pids ${pids[*]}) beside: $*" >&2

# in the background so that a signal trap runs at once (bash runs traps only between foreground commands), in
# a process group of its own (set -m) so that it keeps its Ctrl-C handling and a signal reaches all of it
set -m
"$@" <&0 &
cmd=$!
wait "$cmd"
status=$?
cmd=""
exit $status
