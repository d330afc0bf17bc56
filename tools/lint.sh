#!/usr/bin/env bash
# lint.sh: the project's style, as CI checks it (ctest's `lint` test).
#   luacheck .                     Lua (.luacheckrc: zero warnings)
#   clang-format --dry-run         C in host/, bpf-src/, tests/ (.clang-format)
#   every tracked shell script     checked by shellcheck -x
#   every tracked Python file      checked by pyflakes3
#   tools/fnlen.lua                no function over 80 lines in lib/,
#                                  scripts/, host/ or bpf-src/ unless a
#                                  "Long:" comment at its head says why
#   .editorconfig basics           final newline, no trailing blanks, LF
# Exit 0 when clean; otherwise each finding on stderr, exit 1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
bad=0
say() { printf 'lint: %s\n' "$*" >&2; bad=1; }

if ! luacheck --no-color -q . >/tmp/lint.$$ 2>&1; then
  grep -v '^Total' /tmp/lint.$$ >&2
  say "luacheck found warnings"
fi
rm -f /tmp/lint.$$

mapfile -t cfiles < <(git ls-files 'host/*.c' 'host/*.h' 'bpf-src/*.c' 'bpf-src/*.h' 'tests/*.c' 'tests/*.h')
if ! clang-format --dry-run --Werror "${cfiles[@]}" 2>/tmp/lint.$$; then
  grep 'warning:' /tmp/lint.$$ | head -20 >&2
  say "clang-format: run clang-format -i on the files above"
fi
rm -f /tmp/lint.$$

mapfile -t shfiles < <(git ls-files '*.sh')
if ! shellcheck -x "${shfiles[@]}" >/tmp/lint.$$ 2>&1; then
  head -60 /tmp/lint.$$ >&2
  say "shellcheck found problems"
fi
rm -f /tmp/lint.$$

mapfile -t pyfiles < <(git ls-files '*.py')
if ! pyflakes3 "${pyfiles[@]}" >/tmp/lint.$$ 2>&1; then
  cat /tmp/lint.$$ >&2
  say "pyflakes found problems"
fi
rm -f /tmp/lint.$$

mapfile -t srcfiles < <(git ls-files 'lib/*.lua' 'scripts/*.lua' 'host/*.c' 'bpf-src/*.c' 'bpf-src/*.h' |
  grep -v '/vendor/')
if ! luajit tools/fnlen.lua "${srcfiles[@]}" >/tmp/lint.$$ 2>&1; then
  cat /tmp/lint.$$ >&2
  say "functions over 80 lines (split them, or say why in a 'Long:' comment at their head)"
fi
rm -f /tmp/lint.$$

# .editorconfig: every tracked text file ends in a newline, has LF line
# ends and (Markdown aside) no trailing blanks
while IFS= read -r f; do
  case "$f" in *.png|*.gz|*.jpg|tests/fuzz/seeds/*) continue ;; esac
  [ -s "$f" ] || continue
  grep -Iq . "$f" || continue # binary
  [ "$(tail -c1 "$f" | od -An -tx1 | tr -d ' ')" = 0a ] || say "$f: no newline at the end"
  grep -q $'\r' "$f" && say "$f: CRLF line ends"
  case "$f" in *.md) ;; *) grep -nE '[[:blank:]]+$' "$f" | head -3 | sed "s|^|$f:|" >&2 && say "$f: trailing blanks" ;; esac
done < <(git ls-files)
exit $bad
