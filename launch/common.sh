# Shared helpers for the launch scripts (sourced, not run).

DRY_RUN=${DRY_RUN:-0}

# quote ARG: ARG as a shell word (single-quoted when it holds special characters).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# quote_words WORD...: the words as one shell-quoted line.
quote_words() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "${arg}")"
  done
  printf '%s' "${out}"
}

# run CMD...: print the command (shell-quoted, copy-pastable), then run it unless DRY_RUN=1.
run() {
  printf '+ %s\n' "$(quote_words "$@")"
  if [[ "${DRY_RUN}" != 1 ]]; then
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

# The project as a tarball of the committed tree (what every worker installs).
make_tarball() {
  local out=$1
  local root
  root=$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --show-toplevel)
  run git -C "${root}" archive --format=tar.gz --prefix=uwm_jax/ -o "${out}" HEAD
}
