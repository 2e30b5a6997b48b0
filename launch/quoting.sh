# Shell quoting shared by the launch scripts: printed commands can be pasted back into a shell.

# One shell word, single-quoted when it needs quoting.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command line, each word quoted as needed.
show() {
  local separator=""
  for word in "$@"; do printf '%s' "$separator"; quote "$word"; separator=" "; done
  echo
}
