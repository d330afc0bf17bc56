-- denet.bpf.source: the program text made ready for libbcc, as pure text
-- functions: #include inlining (through the trust check) and the #line
-- directives that keep clang's diagnostics on the user's lines.
local source = require("denet.bpf.source")

-- the file:line a line of the rewritten text reports, as clang counts
-- (the text itself is `name`)
local function origin(text, want, name)
  local file, line = name or "prog.c", 0
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do
    local ln, f = l:match('^%s*#%s*line%s+(%d+)%s*"([^"]*)"')
    if ln then
      file, line = f, tonumber(ln) - 1
    else
      line = line + 1
      if l:find(want, 1, true) then
        return file .. ":" .. line
      end
    end
  end
end

describe("#include inlining", function()
  it("puts a quoted include in place between #line markers, beside the includer first", function()
    local dir = H.tmpfile("-inc")
    os.execute("mkdir -m 755 " .. H.quote(dir))
    H.write(dir .. "/a.h", "#pragma once\nint in_a;\n#include \"b.h\"\n")
    H.write(dir .. "/b.h", "int in_b;\n")
    local text = "int first;\n#include \"a.h\"\n#include \"a.h\"\n#include <linux/sched.h>\nint last;\n"
    local out = source.inline_includes(text, "prog.c", dir, {})
    assert.equals("prog.c:1", origin(out, "int first;"))
    assert.equals(dir .. "/a.h:2", origin(out, "int in_a;"))
    assert.equals(dir .. "/b.h:1", origin(out, "int in_b;"))
    assert.equals("prog.c:5", origin(out, "int last;"))
    -- #pragma once: a.h once; angle-bracket includes are left to clang
    assert.equals(1, select(2, out:gsub("int in_a;", "")))
    assert.matches("\n#include <linux/sched%.h>\n", out)
  end)

  it("looks in the -I and -iquote folders, and leaves includes that name no file to clang", function()
    local dir = H.tmpfile("-inc")
    os.execute("mkdir -m 755 " .. H.quote(dir))
    H.write(dir .. "/c.h", "int in_c;\n")
    local dirs = source.quote_dirs({ "-DX=1", "-iquote" .. dir, "-I", "/nonexistent" })
    assert.same({ dir, "/nonexistent" }, dirs)
    local out = source.inline_includes('#include "c.h"\n#include "virtual/bcc.h"\n', "p.c", nil, dirs)
    assert.equals(dir .. "/c.h:1", origin(out, "int in_c;"))
    assert.matches('#include "virtual/bcc%.h"', out)
  end)

  it("refuses includes nested more than 32 deep", function()
    local dir = H.tmpfile("-inc")
    os.execute("mkdir -m 755 " .. H.quote(dir))
    H.write(dir .. "/self.h", '#include "self.h"\n')
    local ok, err = pcall(source.inline_includes, '#include "self.h"\n', "p.c", dir, {})
    assert.is_false(ok)
    assert.matches("nested more than 32 deep", tostring(err))
  end)
end)

describe("#line fixing", function()
  it("puts the numbering back after each TRACEPOINT_PROBE's opening brace, across composed parts", function()
    local text = table.concat({
      '#line 1 "tree.c"',
      "int a;",
      "TRACEPOINT_PROBE(sched, sched_switch)",
      "{ int in_body;",
      "  return 0;",
      "}",
      '#line 1 "mine.c"',
      "TRACEPOINT_PROBE(raw_syscalls, sys_enter) { return bad; }",
    }, "\n")
    -- libbcc inserts each probe's argument struct before it: the
    -- directive after the brace puts the numbering back
    local function as_libbcc(t)
      return (t:gsub("TRACEPOINT_PROBE", "struct args_t {\n  int a;\n  int b;\n};\nTRACEPOINT_PROBE"))
    end
    local out = as_libbcc(source.fix_lines(text, "prog"))
    assert.equals("tree.c:3", origin(out, "int in_body;"))
    assert.equals("tree.c:4", origin(out, "return 0;"))
    assert.equals("mine.c:1", origin(out, "return bad;"))
    -- (without it, the lines would move)
    assert.equals("tree.c:7", origin(as_libbcc(text), "int in_body;"))
    -- and the column of what follows the brace is kept
    assert.matches("\n +int in_body;", out)
  end)

  it("joins parts with #line markers", function()
    local out = source.compose({ { name = "one.c", text = "int x;" }, { name = "two.c", text = "int y;\nint z;" } })
    assert.equals("two.c:2", origin(out, "int z;"))
  end)
end)

describe("program types and diagnostics", function()
  it("gives the type autoattach loads a function as", function()
    assert.equals(5, source.auto_type("tracepoint__sched__sched_switch"))
    assert.equals(17, source.auto_type("raw_tracepoint__sched_switch"))
    assert.equals(2, source.auto_type("kretprobe__do_sys_open"))
    assert.is_nil(source.auto_type("helper"))
  end)

  it("puts errors first, names the file, and counts them", function()
    local diag = "/virtual/main.c:3:1: warning: unused\n  x\n/virtual/main.c:9:5: error: bad\n  y\n"
    local out = source.tidy_diagnostics(diag, "mine.c")
    assert.equals("mine.c:9:5: error: bad\n  y", out)
    assert.equals(1, source.count_errors(diag))
  end)
end)
