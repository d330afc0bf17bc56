-- The Python frames of CPython 3.11 programs, read in the kernel as a
-- thread blocks (bpf-src/python.c, lib/denet/stacks/python.lua), in place
-- of the interpreter's C frames in user stacks. Its text is compiled with
-- -DDN_PYTHON only (with the unwinder).
return {
  name = "pyframes",
  description = "Python functions and lines in user stacks (CPython 3.11)",
  bpf = {
    file = "python.c",
    order = 46,
    needs = { "unwind" },
    cflags = function()
      return require("denet.stacks.python").cflags()
    end,
  },
}
