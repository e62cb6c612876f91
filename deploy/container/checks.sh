# Checks of the container smoke test, sourced by smoke.sh (and by its unit test).
# Each fails by `return 1` from an `if`, never by a `[ a ] && [ b ]` list: `set -e` ignores a
# failing command in such a list unless it is the last one, so a container that exited 3
# once printed "passed".

# stopped_cleanly EXIT_CODE ELAPSED_S GRACE_S
stopped_cleanly() {
  if [ "$1" != "0" ]; then
    echo "FAILED: the container exited with code $1 (expected 0 after draining)"
    return 1
  fi
  if [ "$2" -ge "$3" ]; then
    echo "FAILED: stopping took ${2}s, not under the ${3}s grace period"
    return 1
  fi
}
